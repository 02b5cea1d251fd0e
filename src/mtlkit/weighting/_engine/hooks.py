"""Forward hooks that record the inputs and outputs of the shared layers.

For each shared module that has a layer-wise Gram block (all of its own parameters shared;
:func:`mtlkit.weighting._engine.layers.kind_of`: Linear, Conv1d/2d, Embedding, affine
BatchNorm/LayerNorm/GroupNorm), a forward hook records the input x and the output y of every
call made with gradients enabled, with their autograd versions, so that
:func:`mtlkit.weighting._engine.gram.gramian` can tell a record changed in place afterwards
(``ReLU(inplace=True)``) and fall back to the exact path for that module. The output of a
convolution or batch norm is replaced by the same values routed through an autograd function
whose batched backward folds the tasks into the batch dimension
(:mod:`~mtlkit.weighting._engine.layers`). Hooks are installed lazily, on the first Gramian
computation for a model.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtlkit.weighting._engine.layers import (
    BATCH_NORMS,
    CONVS,
    batch_norm_output,
    conv_output,
    kind_of,
    linear_output,
)

#: records kept per module between two Gramian computations before the engine gives up on
#: the fast path for one step (a forward pass with gradients whose losses never reach a method)
MAX_RECORDS = 64


def supported(module: nn.Module) -> bool:
    """Whether ``module`` has a layer-wise Gram block (see :func:`.layers.kind_of`)."""
    return kind_of(module) is not None


@dataclass
class Recorder:
    """Forward hooks on the shared modules with a Gram block, recording per call
    (input, output, their versions, and the statistics a batch norm used)."""

    shared_ids: frozenset[int]
    modules: list[nn.Module]
    calls: dict[int, list[tuple[Tensor, Tensor, int, int, object]]] = field(default_factory=dict)
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    overflow: bool = False

    def hook(self, module: nn.Module, args: tuple[object, ...], output: object) -> Tensor | None:
        if not torch.is_grad_enabled():
            return None
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None
        if not args or not isinstance(args[0], Tensor):
            self.overflow = True  # input passed by keyword: cannot record it
            return None
        x = args[0]
        aux: object = None
        replaced = None
        if type(module) is nn.Linear:
            replaced = linear_output(module, x, output)
        elif isinstance(module, CONVS):
            replaced = conv_output(module, x, output)
        elif isinstance(module, BATCH_NORMS):
            replaced, aux = batch_norm_output(module, x, output)
        y = output if replaced is None else replaced
        records = self.calls.setdefault(id(module), [])
        if len(records) >= MAX_RECORDS:
            records.pop(0)
            self.overflow = True
        records.append((x, y, x._version, y._version, aux))
        return replaced

    def clear(self) -> None:
        self.calls.clear()
        self.overflow = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.clear()


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
