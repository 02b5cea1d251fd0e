"""Forward hooks that record the inputs and outputs of the shared layers.

For each shared ``nn.Linear`` / ``nn.Conv2d`` (all of its own parameters shared), a forward
hook records the input A and the output y of every call made with gradients enabled, with
their autograd versions, so that :func:`mtlkit.weighting._engine.gram.gramian` can tell a
record changed in place afterwards (``ReLU(inplace=True)``) and fall back to the exact path.
Hooks are installed lazily, on the first Gramian computation for a model.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: records kept per module between two Gramian computations before the engine gives up on
#: the fast path for one step (a forward pass with gradients whose losses never reach a method)
MAX_RECORDS = 64


def supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


@dataclass
class Recorder:
    """Forward hooks on the shared Linear/Conv2d modules, recording (input, output) per call."""

    shared_ids: frozenset[int]
    modules: list[nn.Module]
    calls: dict[int, list[tuple[Tensor, Tensor, int, int]]] = field(default_factory=dict)
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    overflow: bool = False

    def hook(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not torch.is_grad_enabled():
            return
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        if not args or not isinstance(args[0], Tensor):
            self.overflow = True  # input passed by keyword: cannot record it
            return
        x = args[0]
        records = self.calls.setdefault(id(module), [])
        if len(records) >= MAX_RECORDS:
            records.pop(0)
            self.overflow = True
        records.append((x, output, x._version, output._version))

    def clear(self) -> None:
        self.calls.clear()
        self.overflow = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.clear()


def compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its modules is compiled (``torch.compile(model)`` or
    ``module.compile()``). Compiled code does not run forward hooks added after its first call,
    and the tensors a hook sees inside a compiled graph are not the ones its losses'
    gradients flow through, so the engine does not hook such a model: its Gramian comes from
    the explicit Jacobian (exact)."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing is compiled
    if dynamo is None:
        return False
    return any(
        isinstance(m, dynamo.OptimizedModule) or getattr(m, "_compiled_call_impl", None)
        for m in model.modules()
    )


_RECORDERS: weakref.WeakKeyDictionary[nn.Module, Recorder] = weakref.WeakKeyDictionary()


def recorder_for(model: nn.Module, shared: Sequence[Tensor]) -> tuple[Recorder, bool]:
    """The model's recorder, installed if needed; the flag says whether it existed before."""
    ids = frozenset(id(p) for p in shared)
    rec = _RECORDERS.get(model)
    if rec is not None and rec.shared_ids == ids:
        return rec, True
    if rec is not None:
        rec.remove()
    modules = []
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if own and supported(m) and all(id(p) in ids for p in own):
            modules.append(m)
    rec = Recorder(shared_ids=ids, modules=modules)
    rec.handles = [m.register_forward_hook(rec.hook) for m in modules]
    _RECORDERS[model] = rec
    return rec, False


def release_hooks(model: nn.Module) -> None:
    """Remove the Gramian engine's forward hooks from ``model`` (they are installed lazily)."""
    rec = _RECORDERS.pop(model, None)
    if rec is not None:
        rec.remove()
