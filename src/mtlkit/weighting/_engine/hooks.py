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

import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.weighting._engine.layers import (
    BATCH_NORMS,
    CONVS,
    batch_norm_output,
    conv_batch_norm_output,
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
    #: the latest recorded convolution call: (routed output, module, input)
    last_conv: tuple[Tensor, nn.Module, Tensor] | None = None

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
            self.last_conv = (replaced, module, x)
        elif isinstance(module, BATCH_NORMS):
            conv = self.last_conv
            if conv is not None and x is conv[0] and not conv[2].requires_grad:
                # a convolution on the data, then this batch norm: one fused backward
                replaced, aux = conv_batch_norm_output(conv[1], conv[2], module, x, output)
            else:
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
        self.last_conv = None

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


def _attention_supported(m: nn.Module, ids: frozenset[int]) -> bool:
    """A MultiheadAttention whose projections have a Gram block: packed q/k/v weights, no
    extra key/value biases, every parameter shared."""
    return (
        type(m) is nn.MultiheadAttention
        and bool(m._qkv_same_embed_dim)
        and m.bias_k is None
        and not m.add_zero_attn
        and all(id(p) in ids for p in m.parameters())
    )


class _AttentionLinears:
    """While a MultiheadAttention runs: records the functional ``F.linear`` calls on its input
    projection (the packed weight or row blocks of it) and its output projection, as
    (input, output, versions, (weight, first row, last row, bias given)).

    ``F.multi_head_attention_forward`` calls the module-level ``linear`` of
    ``torch.nn.functional``; for the duration of the module's forward pass that name points
    to :meth:`linear`, which computes the same thing and records it (calls on any other
    weight pass straight through)."""

    def __init__(self, rec: Recorder, module: nn.MultiheadAttention) -> None:
        self.rec, self.module = rec, module
        self.original: Any = None

    def _rows(self, w: Tensor) -> tuple[Tensor, int, int] | None:
        m = self.module
        for param in (m.in_proj_weight, m.out_proj.weight):
            if w is param:
                return param, 0, param.shape[0]
            if w._base is param and w.stride() == param.stride() and w.shape[1:] == param.shape[1:]:
                start = (w.storage_offset() - param.storage_offset()) // param.stride(0)
                return param, start, start + w.shape[0]
        return None

    def linear(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        out: Tensor = self.original(x, w, b)
        if not torch.is_grad_enabled() or not out.requires_grad:
            return out
        rows = self._rows(w)
        if rows is None:
            return out
        records = self.rec.calls.setdefault(id(self.module), [])
        if len(records) >= MAX_RECORDS:
            records.pop(0)
            self.rec.overflow = True
        records.append((x, out, x._version, out._version, (*rows, b is not None)))
        return out

    def __enter__(self) -> None:
        self.original = F.linear
        F.linear = self.linear  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        F.linear = self.original


def recorder_for(model: nn.Module, shared: Sequence[Tensor]) -> tuple[Recorder, bool]:
    """The model's recorder, installed if needed; the flag says whether it existed before."""
    ids = frozenset(id(p) for p in shared)
    rec = _RECORDERS.get(model)
    if rec is not None and rec.shared_ids == ids:
        return rec, True
    if rec is not None:
        rec.remove()
    modules = []
    attention = []
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if own and supported(m) and all(id(p) in ids for p in own):
            modules.append(m)
        elif _attention_supported(m, ids):
            attention.append(m)
    rec = Recorder(shared_ids=ids, modules=modules + attention)
    rec.handles = [m.register_forward_hook(rec.hook) for m in modules]
    for m in attention:
        rec.handles += _attention_hooks(rec, m)
    _RECORDERS[model] = rec
    return rec, False


def _attention_hooks(rec: Recorder, m: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """A pre-hook that enters :class:`_AttentionLinears` and a hook that leaves it (also when
    the forward pass raises)."""
    modes: list[_AttentionLinears] = []

    def enter(module: nn.Module, args: object) -> None:
        mode = _AttentionLinears(rec, module)  # type: ignore[arg-type]
        mode.__enter__()
        modes.append(mode)

    def leave(module: nn.Module, args: object, output: object) -> None:
        if modes:
            modes.pop().__exit__(None, None, None)

    return [
        m.register_forward_pre_hook(enter),
        m.register_forward_hook(leave, always_call=True),
    ]


def release_hooks(model: nn.Module) -> None:
    """Remove the Gramian engine's forward hooks from ``model`` (they are installed lazily)."""
    rec = _RECORDERS.pop(model, None)
    if rec is not None:
        rec.remove()
