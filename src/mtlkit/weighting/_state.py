"""A weighting method's state, declared once per attribute (:class:`StateField`).

A method lists its state in ``state_fields`` (attribute name → :class:`StateField`);
:class:`~mtlkit.weighting.base.Weighting` derives from that one declaration its
``state_dict``, ``load_state_dict`` (with errors that name the method and the field),
``reset``, ``to`` and the slicing of per-task state in ``restrict``. What is saved is tensors
and plain JSON values only, so a checkpoint stores it without pickling
(:mod:`mtlkit.train.state`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError

if TYPE_CHECKING:
    from mtlkit.weighting.base import Weighting

Kind = Literal["tensor", "parameter", "vector", "list", "int", "generator", "method"]


@dataclass(frozen=True)
class StateField:
    """One attribute of a method that holds state across steps.

    ``kind`` says what the attribute holds and how it is saved:

    - ``"tensor"``: a tensor, or None until the method creates it; saved as a copy;
    - ``"parameter"``: a learnable ``nn.Parameter`` (returned by ``parameters()``), created per
      task in ``on_bind``; restored and reset *in place*, so an optimiser keeps the same object;
      ``reset`` fills it with the value of the attribute named by ``init``;
    - ``"vector"``: a float64 tensor on the CPU, saved as a list of floats;
    - ``"list"``: a list of floats, or of lists of floats;
    - ``"int"``: a counter (0 after ``reset``);
    - ``"generator"``: a ``torch.Generator`` the method creates in its constructor; saved as
      its uint8 state; ``reset`` seeds it again with the attribute named by ``init``;
    - ``"method"``: a nested weighting method (the parts of a composition); its own state dict
      is saved under the key, and ``reset``, ``restrict`` and ``to`` reach it.

    ``key`` is the name in the state dict (default: the attribute name without leading
    underscores). ``axes`` are the dimensions indexed by task, for ``restrict`` (None: not per
    task): ``(0,)`` for a vector, ``(0, 1)`` for a task × task matrix, ``(1,)`` for a list of
    per-epoch task vectors. ``fill`` is the value given to the absent tasks when the state is
    first created during a partial step (None: such state is dropped and created again at the
    next full step). ``cpu64`` restores a tensor as float64 on the CPU, where the method keeps
    it (``to`` leaves it there). ``saved=False`` marks a value of the current step only: sliced
    by ``restrict``, cleared by ``reset`` and ``load_state_dict``, never saved. ``default`` is
    the value after ``reset`` (copied).
    """

    kind: Kind = "tensor"
    key: str | None = None
    axes: tuple[int, ...] | None = None
    fill: float | None = None
    cpu64: bool = False
    saved: bool = True
    default: Any = None
    init: str | None = None

    def key_of(self, name: str) -> str:
        """The field's name in the state dict."""
        return self.key if self.key is not None else name.lstrip("_")

    # ------------------------------------------------------------------ values

    def initial(self) -> Any:
        """The value after ``reset`` (kinds other than parameter, generator and method)."""
        if self.kind == "int" and self.default is None:
            return 0
        return copy.deepcopy(self.default)

    def save(self, value: Any) -> Any:
        """The JSON-ready or tensor form of ``value`` for the state dict."""
        if value is None:
            return None
        if self.kind in ("tensor", "parameter"):
            return value.detach().clone()
        if self.kind == "vector":
            return value.tolist()
        if self.kind == "list":
            return copy.deepcopy(value)
        if self.kind == "generator":
            return value.get_state().clone()
        if self.kind == "method":
            return value.state_dict()
        return value

    def load(self, owner: Weighting, name: str, value: Any) -> None:
        """Set ``owner``'s attribute ``name`` from its saved ``value`` (checked)."""
        key = self.key_of(name)
        current = getattr(owner, name)

        def bad(expected: str) -> ConfigError:
            return ConfigError(f"{owner}: state '{key}' must be {expected}, got {value!r}")

        if self.kind == "method":
            if not isinstance(value, Mapping):
                raise bad("a mapping (the part's state dict)")
            current.load_state_dict(value)
        elif self.kind == "generator":
            if not isinstance(value, Tensor) or value.dtype != torch.uint8:
                raise bad("a uint8 tensor (a generator state)")
            current.set_state(value.detach().cpu().clone())
        elif value is None:
            if self.kind != "parameter":
                setattr(owner, name, None)
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("an integer")
            setattr(owner, name, value)
        elif self.kind == "parameter":
            if not isinstance(value, Tensor) or current is None or value.shape != current.shape:
                shape = "" if current is None else f" of shape {tuple(current.shape)}"
                raise bad(f"a tensor{shape}")
            with torch.no_grad():
                current.copy_(value)
        elif self.kind == "tensor":
            if not isinstance(value, Tensor):
                raise bad("a tensor")
            self._check_tasks(owner, key, value)
            tensor = value.detach()
            tensor = tensor.to("cpu", torch.float64) if self.cpu64 else tensor
            setattr(owner, name, tensor.clone())
        else:  # vector, list
            try:
                as_tensor = torch.tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise bad("a list of numbers") from None
            if as_tensor.numel():
                self._check_tasks(owner, key, as_tensor)
            setattr(owner, name, as_tensor if self.kind == "vector" else as_tensor.tolist())

    def _check_tasks(self, owner: Weighting, key: str, value: Tensor) -> None:
        """An error unless ``value`` has one entry per task along each of the task axes."""
        if self.axes is None:
            return
        sizes = {value.shape[a] for a in self.axes if a < value.dim()}
        count = len(owner.tasks) if owner.tasks is not None else None
        if (
            value.dim() <= max(self.axes)
            or len(sizes) != 1
            or (count is not None and sizes != {count})
        ):
            axes = ", ".join(str(a) for a in self.axes)
            tasks = "the same size" if count is None else f"{count} entries (one per task)"
            raise ConfigError(
                f"{owner}: state '{key}' must have {tasks} along axes {axes}, "
                f"got shape {tuple(value.shape)}"
            )

    def reset(self, owner: Weighting, name: str) -> None:
        """Set ``owner``'s attribute ``name`` to its value before any training."""
        current: Any = getattr(owner, name, None)
        if self.kind == "parameter":
            if current is not None:
                assert self.init is not None, f"{owner}: parameter '{name}' needs init="
                with torch.no_grad():
                    current.fill_(float(getattr(owner, self.init)))
        elif self.kind == "generator":
            assert self.init is not None, f"{owner}: generator '{name}' needs init= (the seed)"
            current.manual_seed(int(getattr(owner, self.init)))
        elif self.kind == "method":
            current.reset()
        else:
            setattr(owner, name, self.initial())

    def move(self, owner: Weighting, name: str, device: torch.device | str) -> None:
        """Move ``owner``'s attribute ``name`` to ``device`` (parameters in place)."""
        current = getattr(owner, name)
        if current is None:
            return
        if self.kind == "parameter":
            move_parameter(current, device)
        elif self.kind == "tensor" and not self.cpu64:
            setattr(owner, name, current.to(device))
        elif self.kind == "method":
            current.to(device)


def move_parameter(param: Tensor, device: torch.device | str) -> None:
    """Move ``param`` in place to ``device`` (as ``Module.to`` does), so an optimiser built
    before keeps the same object."""
    if param.device != torch.device(device):
        with torch.no_grad():
            param.data = param.data.to(device)
            if param.grad is not None:
                param.grad = param.grad.to(device)


# ---------------------------------------------------------------------------- per-task slices


def _index(axes: tuple[int, ...], idx: Tensor, dims: int) -> tuple[Any, ...]:
    """An advanced index selecting ``idx`` on each of ``axes`` (broadcast against each other)."""
    index: list[Any] = [slice(None)] * dims
    for k, axis in enumerate(axes):
        shape = [1] * len(axes)
        shape[k] = -1
        index[axis] = idx.view(shape)
    return tuple(index)


def take(value: Any, axes: tuple[int, ...], idx: list[int]) -> Any:
    """The entries of the present tasks (see :meth:`Weighting.restrict`)."""
    if value is None or (isinstance(value, list) and not value):
        return value
    if isinstance(value, list):
        return take(torch.tensor(value, dtype=torch.float64), axes, idx).tolist()
    positions = torch.tensor(idx, device=value.device)
    return value[_index(axes, positions, value.dim())]


def put(full: Any, sub: Any, spec: StateField, idx: list[int], num_tasks: int) -> Any:
    """``full`` with the present tasks' entries replaced by ``sub``."""
    assert spec.axes is not None
    if sub is None or isinstance(full, nn.Parameter):
        return full
    if isinstance(sub, list):
        if not sub:
            return full
        base = None if full is None or not full else torch.tensor(full, dtype=torch.float64)
        merged = put(base, torch.tensor(sub, dtype=torch.float64), spec, idx, num_tasks)
        return None if merged is None else merged.tolist()
    if full is None:
        if spec.fill is None:
            return None
        shape = list(sub.shape)
        for axis in spec.axes:
            shape[axis] = num_tasks
        full = torch.full(shape, spec.fill, dtype=sub.dtype, device=sub.device)
    out = full.detach().clone()
    positions = torch.tensor(idx, device=out.device)
    out[_index(spec.axes, positions, out.dim())] = sub.detach().to(out)
    return out
