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
        check_params(factory, params, f"{self.kind} '{name}'")
        return factory(*args, **params)

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
