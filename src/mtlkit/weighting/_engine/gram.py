"""The Gram matrix G = J Jᵀ of the task gradients, built layer by layer without forming J.

Forward hooks (:mod:`mtlkit.weighting._engine.hooks`) record, for each shared module with a
layer rule (:mod:`mtlkit.weighting._engine.layers`), its input and output; one batched
backward gives the per-task gradients Δ_i of each recorded output, and the layer's block of G
follows from its input and Δ alone:

- ``nn.Linear``: :func:`layer_gramian`, the cheaper of its two exact forms;
- ``nn.Embedding``: the per-task gradients of the looked-up rows only (T × distinct rows × D);
- affine ``nn.LayerNorm`` / ``nn.GroupNorm``: Σ Δ_i ⊙ x̂ and Σ Δ_i;
- ``nn.Conv1d`` / ``nn.Conv2d`` and affine batch norms: their outputs are routed through an
  autograd function whose batched backward folds the T tasks into the batch dimension and
  returns the per-task parameter gradients directly (one convolution for all T tasks);
- ``nn.MultiheadAttention`` (packed q/k/v weight, no ``bias_k``/``add_zero_attn``): it applies
  its projections functionally, so its forward hooks record the ``F.linear`` calls on the
  packed input projection (whole, or its q / kv / q,k,v row blocks) and on the output
  projection; each row block is a Linear block (:func:`layer_gramian`);
- any other shared parameter (custom modules, other attention layouts): exact per-parameter
  gradients from the same batched backward.

This is the autogram idea of TorchJD (Quinton & Rey, 2024, "Jacobian Descent for
Multi-Objective Optimization", arXiv:2406.16232), written for mtlkit's model contract. The
same records give the update Jᵀw for any task weights w (:meth:`Gramian.combine`: a Linear
layer's weight gradient is (Σ_i w_i Δ_i)ᵀA), so a method's weights are applied without another
backward pass through the encoder. At many tasks, when the Linear layers' Δ would exceed
:data:`KEEP_ROWS_BYTES`, each Linear block is taken while its Δ passes through the batched
backward and then dropped (memory: T × T plus one layer's Δ), and those layers' update is one
more backward pass of Σ_i w_i L_i.

An encoder with a shared convolution on CPU is not hooked: its J comes from one ordinary
backward pass per task (:func:`~mtlkit.weighting._engine.backward.passes_pay`, faster there
than the batched pass with these rules), unless its shared Linear, embedding and attention
weights would take more than :data:`KEEP_ROWS_BYTES` of J.

Hooks are installed on the first call for a model, so that first step uses the explicit
Jacobian (exact, slower); from the next forward pass on, the Gramian path is used. A recorded
output changed in place afterwards (``ReLU(inplace=True)``), a hooked module called through
``module.forward`` (no hook), or records that overflowed make the engine fall back to exact
per-parameter gradients for that module or to the explicit path for that step, so the result
is always exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.weighting._engine.backward import (
    head_gradients,
    passes_pay,
    per_task_gradients,
    task_jacobian,
)
from mtlkit.weighting._engine.hooks import compiled, recorder_for, release_hooks
from mtlkit.weighting._engine.layers import (
    FOLDED,
    embedding_rows,
    embedding_task_grads,
    kind_of,
    layer_gramian,
    norm_task_grads,
    requesting,
    row_gram,
    sinking,
)

#: above this many bytes of the Linear layers' per-task output gradients (T × their outputs),
#: G's blocks are taken as the gradients pass and the update costs one more backward pass
#: instead of holding them all (memory at many tasks)
KEEP_ROWS_BYTES = 48 * 2**20


@dataclass
class Gramian:
    """G = J Jᵀ of the task losses over the shared parameters, with what it was built from.

    ``matrix`` is G (T × T). :meth:`combine` turns task weights w into the update Jᵀw, per
    shared parameter, from what gave G: a Linear layer's inputs A and per-task output
    gradients Δ (one product per layer), the per-task gradients of the other recorded
    layers' parameters (small: a convolution's or a norm's parameters) and of the rest, so
    applying the weights needs no further backward pass.
    """

    matrix: Tensor
    shared: Sequence[Tensor]
    #: per recorded Linear module: (module, its inputs A and per-task output gradients Δ, per call)
    layers: list[tuple[nn.Module, list[Tensor], list[Tensor]]] = field(default_factory=list)
    #: per-task gradients (T × shape) of the other shared parameters, by id
    rest: dict[int, Tensor] = field(default_factory=dict)
    #: per embedding weight, by id: (its distinct rows, T × rows × D per-task gradients)
    sparse: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    #: the explicit T × P Jacobian, when G was computed from it
    jacobian: Tensor | None = None
    #: shared parameters whose update is one more backward pass (``replay``): the Linear
    #: layers whose Gram blocks were taken without keeping their per-task output gradients
    replayed: list[Tensor] = field(default_factory=list)
    replay: Callable[[Tensor], Sequence[Tensor | None]] | None = None
    #: row blocks of an attention projection: (weight, bias or None, first row, last row,
    #: inputs A, per-task output gradients Δ)
    sliced: list[tuple[Tensor, Tensor | None, int, int, Tensor, Tensor]] = field(
        default_factory=list
    )

    def combine(self, weights: Tensor) -> list[Tensor | None]:
        """Σ_i w_i ∇_θ L_i for each shared parameter θ, in order; None where no loss reaches θ."""
        if self.jacobian is not None:
            update = weights.to(self.jacobian) @ self.jacobian
            sizes = [p.numel() for p in self.shared]
            return [u.view_as(p) for u, p in zip(update.split(sizes), self.shared, strict=True)]
        out: dict[int, Tensor] = {}
        for m, inputs, grads in self.layers:
            w = weights.to(grads[0])
            weight_grad = bias_grad = None
            for a, d in zip(inputs, grads, strict=True):
                mixed = torch.tensordot(w, d, dims=1)  # N × o: Σ_i w_i Δ_i
                gw = mixed.T @ a
                weight_grad = gw if weight_grad is None else weight_grad + gw
                if m.bias is not None:
                    gb = mixed.sum(dim=0)
                    bias_grad = gb if bias_grad is None else bias_grad + gb
            assert weight_grad is not None
            out[id(m.weight)] = weight_grad.view_as(m.weight)
            if bias_grad is not None:
                out[id(m.bias)] = bias_grad
        for key, g in self.rest.items():
            out[key] = torch.tensordot(weights.to(g), g, dims=1)
        if self.replay is not None:
            for p, u in zip(self.replayed, self.replay(weights), strict=True):
                if u is not None:
                    out[id(p)] = u
        for param, bias, start, stop, a, d in self.sliced:
            mixed = torch.tensordot(weights.to(d), d, dims=1)  # N × rows
            if id(param) not in out:
                out[id(param)] = torch.zeros(param.shape, dtype=d.dtype, device=d.device)
            out[id(param)][start:stop] += mixed.T @ a
            if bias is not None:
                if id(bias) not in out:
                    out[id(bias)] = torch.zeros(bias.shape, dtype=d.dtype, device=d.device)
                out[id(bias)][start:stop] += mixed.sum(dim=0)
        params = {id(p): p for p in self.shared}
        for key, (rows, g) in self.sparse.items():
            p = params[key]
            dense = torch.zeros(p.shape, dtype=g.dtype, device=g.device)
            dense.index_add_(0, rows, torch.tensordot(weights.to(g), g, dims=1))
            out[key] = dense
        return [out.get(id(p)) for p in self.shared]


def compute_gramian(
    losses: Tensor,
    model: nn.Module,
    shared: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """G = J Jᵀ of the losses with respect to the ``shared`` parameters of ``model``.

    Layer by layer from recorded inputs and per-task output gradients when the forward pass
    ran with the hooks in place (see the module docstring); otherwise, and on the first call
    for a model, from the explicit Jacobian. Both are exact. :func:`gramian` also gives the
    means to apply task weights.
    """
    return gramian(
        losses,
        model,
        shared,
        representation=representation,
        head_rows=head_rows,
        chunk_size=chunk_size,
    ).matrix


def gramian(
    losses: Tensor,
    model: nn.Module | None,
    shared: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
) -> Gramian:
    """:func:`compute_gramian`, returned as a :class:`Gramian` that can also apply weights.
    Without a ``model`` (no module to hook) G comes from the explicit Jacobian."""

    def explicit(passes: bool = False) -> Gramian:
        jac = task_jacobian(
            losses,
            shared,
            representation=representation,
            head_rows=head_rows,
            chunk_size=chunk_size,
            passes=passes,
        )
        return Gramian(row_gram(jac), shared, jacobian=jac)

    if model is None:
        return explicit()
    t = losses.shape[0]
    if passes_pay(model, shared) and t * _kept_bytes(model, shared) <= KEEP_ROWS_BYTES:
        # a convolutional encoder on CPU (compiled or not): one backward pass per task, no
        # hooks (the layer records would only slow the passes down), while J's columns that
        # the layer-wise path keeps small (Linear, embedding, attention weights) stay small
        release_hooks(model)
        return explicit(passes=True)
    if compiled(model):
        return explicit()
    rec, existed = recorder_for(model, shared)
    calls, overflow = dict(rec.calls), rec.overflow
    rec.clear()
    if not existed or overflow:
        return explicit()
    # lean: when the Linear layers' per-task output gradients would take more than
    # KEEP_ROWS_BYTES, each layer's block is taken as they pass by and the update is one more
    # backward pass (see Gramian.combine)
    kept = sum(
        t * y.numel() * max(y.element_size(), 4)
        for m in rec.modules
        if type(m) is nn.Linear
        for _, y, _, _, _ in calls.get(id(m), [])
    )
    # (a chunked pass sees a few tasks at a time: the blocks need all T rows at once; the
    # update's replay starts at the representation, below the heads, whose graph a method
    # may already have consumed with the task-specific parameters' backward pass)
    lean = (
        kept > KEEP_ROWS_BYTES
        and (chunk_size is None or chunk_size >= t)
        and representation is not None
    )
    # modules whose records are usable; the others fall back to exact per-parameter gradients
    entries: list[tuple[nn.Module, Tensor, Tensor, object]] = []
    covered: set[int] = set()
    sunk: list[Tensor] = []  # lean: the Linear weights whose blocks the backward takes
    for m in rec.modules:
        if isinstance(m, FOLDED):
            # convolutions and batch norms: their parameters' per-task gradients come from
            # the batched backward itself (folded over tasks, exact, in-place safe)
            continue
        if lean and type(m) is nn.Linear:
            sunk.append(m.weight)
            continue
        records = calls.get(id(m), [])
        if any(x._version != vx or y._version != vy for x, y, vx, vy, _ in records):
            continue
        covered.update(id(p) for p in _own(m))
        entries.extend((m, x, y, aux) for x, y, _, _, aux in records)
    rest = [p for p in shared if id(p) not in covered]
    if not entries and not rest and not sunk:  # no layer recorded (hooks bypassed): recompute
        return explicit()
    if lean and representation is not None and head_rows is None:
        head_rows = head_gradients(losses, representation)  # reused by the update's pass
    with requesting(rest), sinking(sunk) as blocks:
        grads = per_task_gradients(
            losses, [y for _, _, y, _ in entries] + rest, representation, head_rows, chunk_size
        )
    gram = torch.zeros(t, t, dtype=losses.dtype, device=losses.device)
    for block in blocks.values():
        gram += block.to(gram.dtype)
    linear: dict[int, tuple[nn.Module, list[Tensor], list[Tensor]]] = {}
    dense: dict[int, Tensor] = {}  # per-task gradients of conv/norm parameters, by id
    embedded: dict[int, tuple[nn.Module, list[Tensor], list[Tensor]]] = {}
    used: set[int] = set()
    # MultiheadAttention: (weight id, rows, bias?) → (module, weight, rows, bias?, A, Δ)
    attention: dict[tuple[int, int, int, bool], Any] = {}
    for (m, x, _, aux), dy in zip(entries, grads[: len(entries)], strict=True):
        if dy is None:  # a recorded call that these losses do not depend on
            continue
        used.add(id(m))
        kind = kind_of(m)
        # under autocast the recorded inputs and output gradients can be bf16/fp16 and differ
        # in dtype: the products are taken in float32 at least
        dtype = torch.promote_types(torch.promote_types(x.dtype, dy.dtype), torch.float32)
        if type(m) is nn.MultiheadAttention:  # one of its functional projections
            proj: tuple[Tensor, int, int, bool] = aux  # type: ignore[assignment]
            param, start, stop, has_bias = proj
            slot_a = attention.setdefault(
                (id(param), start, stop, has_bias), (m, param, start, stop, has_bias, [], [])
            )
            slot_a[5].append(x.detach().to(dtype).reshape(-1, param.shape[1]))
            slot_a[6].append(dy.to(dtype).reshape(t, -1, stop - start))
            continue
        if kind == "embedding":
            idx, rows = embedding_rows(m, x, dy.to(dtype))
            slot = embedded.setdefault(id(m), (m, [], []))
            slot[1].append(idx)
            slot[2].append(rows)
            continue
        if kind == "linear":
            lin: Any = m
            a = x.detach().to(dtype).reshape(-1, lin.in_features)
            d = dy.to(dtype).reshape(t, -1, lin.out_features)
            slot = linear.setdefault(id(m), (m, [], []))
            slot[1].append(a)
            slot[2].append(d)
            continue
        norm: Any = m
        gg, gbeta = norm_task_grads(norm, x.detach(), dy, aux)
        pairs = [(norm.weight, gg), (norm.bias, gbeta)]
        for p, g in pairs:
            if p is not None and g is not None:
                key = id(p)
                dense[key] = g if key not in dense else dense[key] + g
    unused_hooked = [
        p for m in rec.modules if id(m) not in used for p in _own(m) if id(p) in covered
    ]
    if unused_hooked and _reaches(losses, unused_hooked):
        # a hooked layer took part without being recorded (called via .forward, or the hooks
        # were added after the forward pass): recompute exactly
        return explicit()
    kept_linear: list[tuple[nn.Module, list[Tensor], list[Tensor]]] = []
    for m, a_list, d_list in linear.values():
        a = a_list[0] if len(a_list) == 1 else torch.cat(a_list)
        d = d_list[0] if len(d_list) == 1 else torch.cat(d_list, dim=1)
        lin = m
        if _per_task_cheaper(t, a.shape[0], a.shape[1], d.shape[2]):
            gw = torch.matmul(d.transpose(1, 2), a)  # T × o × i
            dense[id(lin.weight)] = gw
            if lin.bias is not None:
                dense[id(lin.bias)] = d.sum(dim=1)
            continue
        gram += layer_gramian(a, d, bias=getattr(m, "bias", None) is not None).to(gram.dtype)
        kept_linear.append((m, a_list, d_list))
    sliced: list[tuple[Tensor, Tensor | None, int, int, Tensor, Tensor]] = []
    spans: dict[int, list[tuple[int, int]]] = {}
    for m, param, start, stop, has_bias, a_list, d_list in attention.values():
        spans.setdefault(id(param), []).append((start, stop))
        a, d = torch.cat(a_list), torch.cat(d_list, dim=1)
        gram += layer_gramian(a, d, bias=has_bias).to(gram.dtype)
        bias = m.in_proj_bias if param is m.in_proj_weight else m.out_proj.bias
        sliced.append((param, bias if has_bias else None, start, stop, a, d))
    for span in spans.values():  # blocks of one weight must be disjoint row ranges
        span.sort()
        if any(nxt[0] < prev[1] for prev, nxt in pairwise(span)):
            return explicit()
    sparse: dict[int, tuple[Tensor, Tensor]] = {}
    for m, idx_list, rows_list in embedded.values():
        unique, g = embedding_task_grads(torch.cat(idx_list), torch.cat(rows_list, dim=1))
        gram += row_gram(g.reshape(t, -1)).to(gram.dtype)
        sparse[id(m.weight)] = (unique, g)
    per_param: dict[int, Tensor] = {}
    replayed: list[Tensor] = []
    for key, g in dense.items():
        gram += row_gram(g.reshape(t, -1)).to(gram.dtype)
        per_param[key] = g
    sunk_ids = {id(w) for w in sunk}
    sunk_params = {
        id(p)
        for m in rec.modules
        if type(m) is nn.Linear and id(m.weight) in sunk_ids
        for p in m.parameters(recurse=False)
    }
    for p, g in zip(rest, grads[len(entries) :], strict=True):
        if g is not None:
            gram += row_gram(g.reshape(t, -1)).to(gram.dtype)
            per_param[id(p)] = g
        elif id(p) in sunk_params:  # its block was taken in passing: its update is replayed
            replayed.append(p)
    return Gramian(
        gram,
        shared,
        layers=kept_linear,
        rest=per_param,
        sparse=sparse,
        replayed=replayed,
        sliced=sliced,
        replay=_replay(losses, replayed, representation, head_rows) if replayed else None,
    )


def _kept_bytes(model: nn.Module, shared: Sequence[Tensor]) -> int:
    """The bytes of one row of J (float32 at least) that belong to shared layers whose Gram
    block the layer-wise path takes without per-task parameter gradients (Linear, embedding,
    attention)."""
    ids = {id(p) for p in shared}
    return sum(
        p.numel() * max(p.element_size(), 4)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Embedding, nn.MultiheadAttention))
        for p in m.parameters(recurse=False)
        if id(p) in ids
    )


def _per_task_cheaper(t: int, n: int, i: int, o: int) -> bool:
    """Whether a Linear layer (N uses, i inputs, o outputs) is cheaper through its T per-task
    weight gradients (Gram block and update from them) than through the kernel form plus one
    more N·o·i product for the update from A and Δ (true at few tasks)."""
    kernel = n * n * i + t * n * n * o + t * t * n * o + n * o * i
    return t * n * i * o + t * t * i * o < kernel


def _replay(
    losses: Tensor,
    params: list[Tensor],
    representation: Tensor | None,
    head_rows: Tensor | None,
) -> Callable[[Tensor], Sequence[Tensor | None]]:
    """Σ_i w_i ∇L_i for ``params`` by one backward pass from the representation with the
    weighted heads' rows, for the layers whose per-task output gradients were not kept."""

    assert representation is not None and head_rows is not None

    def run(weights: Tensor) -> Sequence[Tensor | None]:
        mixed = torch.tensordot(weights.to(head_rows), head_rows, dims=1)
        with requesting(params):
            return torch.autograd.grad(
                representation, params, mixed, retain_graph=True, allow_unused=True
            )

    return run


def _own(m: nn.Module) -> list[nn.Parameter]:
    """The parameters a recorded module covers (an attention module's include its output
    projection's)."""
    return list(m.parameters(recurse=type(m) is nn.MultiheadAttention))


def _reaches(losses: Tensor, params: Sequence[Tensor]) -> bool:
    """Whether the graph of ``losses`` reaches any of ``params`` (a walk of the autograd graph)."""
    targets = {id(p) for p in params}
    seen: set[int] = set()
    stack = [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in targets:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def gram_statistics(
    gram: Tensor, tasks: Sequence[str]
) -> tuple[dict[str, float], list[list[float]]]:
    """Task-gradient norms and pairwise cosines from the Gram matrix G = J Jᵀ (in float64,
    with numpy: a T × T matrix is a few microseconds there, where each torch call costs
    more than the arithmetic)."""
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    norms = np.sqrt(np.maximum(g.diagonal(), 0.0))
    denom = norms[:, None] * norms[None, :]
    positive = denom > 0
    cos = np.where(positive, g / np.where(positive, denom, 1.0), 0.0)
    return dict(zip(tasks, norms.tolist(), strict=True)), cos.tolist()


def effective_weights(gram: Tensor, jacobian: Tensor, update: Tensor) -> Tensor:
    """The least-squares task weights w with Jᵀw ≈ update: w = G⁺ J update (minimum norm)."""
    rhs = (jacobian.double() @ update.double()).unsqueeze(1)
    weights: Tensor = (torch.linalg.pinv(gram.double(), hermitian=True) @ rhs)[:, 0]
    return weights
