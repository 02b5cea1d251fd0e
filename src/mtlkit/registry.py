"""Name → component registries: the one way a component becomes nameable from a config.

Built-in and user components register the same way::

    from mtlkit.weighting import WEIGHTINGS

    @WEIGHTINGS.register("mine")
    class Mine(LossWeighting): ...

and are then used from YAML as ``weighting: {name: mine}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from pydantic import ConfigDict, TypeAdapter, ValidationError

from mtlkit.errors import ConfigError, RegistryError

T = TypeVar("T")
U = TypeVar("U")  # what a decorator registers and returns unchanged


class Registry(Generic[T]):
    """A mapping from lower-case names to classes or factories of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[U], U]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        key = name.lower()

        def add(item: T) -> T:
            if key in self._items and self._items[key] is not item:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def lookup(self, name: str) -> T:
        """The component registered under ``name``; an unknown name lists the available ones."""
        key = str(name).lower()
        if key not in self._items:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names()) or '(none)'}"
            )
        return self._items[key]

    def build(self, name: str, /, *args: Any, **params: Any) -> Any:
        """Look up ``name`` and call it with ``params``; unknown parameters are named."""
        factory: Callable[..., Any] = self.lookup(name)  # type: ignore[assignment]
        what = f"{self.kind} '{name}'"
        check_params(factory, params, what)
        try:
            checked = coerce_params(factory, params, what)
        except ConfigError as err:
            try:  # a component that checks its own options says it better
                return factory(*args, **params)
            except ConfigError:
                raise
            except Exception:
                raise err from None
        return factory(*args, **checked)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def check_params(factory: Callable[..., Any], params: dict[str, Any], what: str) -> None:
    """Raise a ConfigError naming any key of ``params`` that ``factory`` does not accept."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    accepted = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        known = [n for n, p in accepted.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ConfigError(
            f"{what}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(known) or '(none)'}"
        )


def coerce_params(factory: Callable[..., Any], params: dict[str, Any], what: str) -> dict[str, Any]:
    """``params`` checked against the annotations of ``factory``'s parameters: a ConfigError
    names any value that does not fit; values that fit after a lossless conversion
    (``"1e-4"`` for a float, ``3.0`` for an int) come back converted."""
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(params)
    hosts = [getattr(factory, "__init__", None), factory] if inspect.isclass(factory) else [factory]
    out = dict(params)
    for key, value in params.items():
        if key not in accepted:  # taken by **kwargs
            continue
        adapter = _adapter(accepted[key].annotation, hosts)
        if adapter is None:
            continue
        try:
            out[key] = adapter.validate_python(value)
        except ValidationError as err:
            reason = err.errors()[0]["msg"] if err.errors() else str(err)
            raise ConfigError(f"{what}: option '{key}': {reason}, got {value!r}") from None
        if isinstance(value, bool) and not isinstance(out[key], bool):  # True is not 1
            raise ConfigError(f"{what}: option '{key}' is not a boolean, got {value!r}")
    return out


def _adapter(annotation: Any, hosts: list[Any]) -> TypeAdapter[Any] | None:
    """A pydantic validator of ``annotation`` (a string one is resolved in the module of the
    function that declares it); None when it cannot be resolved or validated."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        for host in hosts:
            namespace = dict(getattr(host, "__globals__", None) or {})
            try:
                annotation = eval(annotation, namespace)
                break
            except Exception:
                continue
        else:
            return None
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:
        try:
            return TypeAdapter(annotation)
        except Exception:
            return None
