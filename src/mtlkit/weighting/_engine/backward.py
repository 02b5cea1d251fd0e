"""Per-task gradients in one vectorised backward pass, and the heads' rows.

With T task losses L_i and inputs θ (P values), the Jacobian J is T × P (row i is ∇_θ L_i).

- :func:`task_jacobian`: J in one vectorised backward (``is_grads_batched``). When a
  representation r is given (the tensor every head reads), each task is first
  back-propagated through its own head only, ∂L_i/∂r, and the T rows are then pushed through
  the shared encoder together: the encoder is traversed once, batched over tasks.
- :func:`head_passes`: the rows ∂L_i/∂r of every head and the task-specific (head)
  parameters' gradient of Σ_i L_i, in one backward pass through the heads;
- :func:`head_factors`: the same rows in factored form (:class:`HeadFactors`, δ_k M_k per
  linear map that reads r), never formed, for heads that read r through linear maps: their
  Gram matrix and Σ_i w_i row_i cost less than the rows themselves.
- :func:`last_shared_parameters`: the parameters of the model's last shared layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.weighting._engine.layers import CONVS, row_gram


def batched_grad(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor,
    *,
    retain_graph: bool = True,
    chunk_size: int | None = None,
    passes: bool = False,
) -> list[Tensor | None]:
    """∂⟨outputs, grad_outputs[i]⟩/∂inputs for every row i, in one vectorised backward.

    ``grad_outputs`` has a leading batch dimension of T rows. Rows are processed ``chunk_size``
    at a time (all at once by default) to bound memory; where vmap cannot batch the backward
    (any error of the batched pass), the rows are done one by one (same result, T passes).
    ``passes``: one ordinary backward pass per row from the start (see :func:`passes_pay`).
    """
    t = grad_outputs.shape[0]
    size = t if chunk_size is None else max(1, int(chunk_size))
    if passes:
        parts = _row_by_row(outputs, inputs, grad_outputs)
    else:
        try:
            parts = [
                torch.autograd.grad(
                    outputs,
                    list(inputs),
                    grad_outputs=grad_outputs[i : i + size],
                    retain_graph=True,
                    is_grads_batched=True,
                    allow_unused=True,
                )
                for i in range(0, t, size)
            ]
        except RuntimeError:
            # vmap cannot batch this backward (an operation without a batching rule;
            # inductor's compiled backward, whose kernels read raw storage): the rows one by
            # one. A real error of the graph is raised again there.
            parts = _row_by_row(outputs, inputs, grad_outputs)
    del retain_graph  # the graph is always kept: the method's own backward follows
    if len(parts) == 1:
        return list(parts[0])  # one chunk: no copy
    result: list[Tensor | None] = []
    for k in range(len(inputs)):
        chunks = [p[k] for p in parts]
        result.append(
            None if chunks[0] is None else torch.cat([c for c in chunks if c is not None])
        )
    return result


def _row_by_row(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor
) -> list[tuple[Tensor | None, ...]]:
    """:func:`batched_grad`'s rows by one ordinary backward pass each (graph kept)."""
    return [
        tuple(
            None if g is None else g.unsqueeze(0)
            for g in torch.autograd.grad(
                outputs,
                list(inputs),
                grad_outputs=grad_outputs[i],
                retain_graph=True,
                allow_unused=True,
            )
        )
        for i in range(grad_outputs.shape[0])
    ]


def passes_pay(model: nn.Module | None, inputs: Sequence[Tensor]) -> bool:
    """Whether per-task gradients of ``inputs`` come faster from one ordinary backward pass
    per task than from the batched (vmap) pass: on CPU, for an encoder with a shared
    convolution.

    Measured on the benchmark CNN (``benchmarks/layer_gramians.py``, one x86 core;
    docs/benchmarks.md, "One pass per task"): the batched pass works on T × the activations
    at once (42 MB per layer at T = 10), which no cache holds, and needs layout copies around
    oneDNN's convolutions; T passes at the batch's own size run the native kernels in cache:
    5–27 % less CPU time at T = 2 to 40 with freed memory kept, 30–39 % with glibc's default
    allocator. On other devices the batched pass is kept: there T passes mean T kernel
    launches per operator, and no GPU was at hand to measure the trade."""
    if model is None or not inputs or inputs[0].device.type != "cpu":
        return False
    ids = {id(p) for p in inputs}
    return any(
        isinstance(m, CONVS) and any(id(p) in ids for p in m.parameters(recurse=False))
        for m in model.modules()
    )


def _scaled_total(losses: Sequence[Tensor], scale: float) -> Tensor:
    """``scale`` · Σ_i L_i, without the multiplication (a graph node more) at scale 1."""
    total = torch.stack(list(losses)).sum()
    return total if scale == 1.0 else total * scale


def head_gradients(losses: Tensor | Sequence[Tensor], representation: Tensor) -> Tensor:
    """The T rows ∂L_i/∂r, each back-propagated through its own head only.

    T small backward passes that each touch one head, which is cheaper than a batched pass in
    which every row traverses every head. Pass the task losses as a sequence of the original
    scalars: rows of a stacked vector would send (zero) gradients through every head. A task
    that does not read r gets a zero row. :func:`head_passes` does it in one pass.
    """
    rows = []
    for loss in losses:
        (g,) = torch.autograd.grad(loss, representation, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(representation) if g is None else g)
    return torch.stack(rows)


def head_passes(
    losses: Sequence[Tensor],
    representation: Tensor,
    params: Sequence[Tensor] = (),
    *,
    scale: float = 1.0,
    out: Tensor | None = None,
) -> tuple[Tensor, list[Tensor | None]]:
    """The rows of :func:`head_gradients` and ``scale`` · ∇ Σ_i L_i for ``params``, in one pass.

    One backward pass of ``scale`` · Σ_i L_i: a hook on each autograd node that reads r (a
    head's first operation) keeps that node's gradient with respect to r for the row of the
    one task whose graph holds the node (and stops it there: the sum over tasks at r is not
    needed); the same pass gives the parameters' gradient (None for a parameter that no loss
    reaches). When a node that reads r belongs to several tasks' graphs (heads that share an
    operation on r) the rows cannot be told apart there, and they come from
    :func:`head_gradients`, T passes, with one more pass for ``params``. The result is the
    same either way. ``out`` (T × r's shape, r's dtype and device) is
    written into and returned instead of a new tensor when it fits: the engine reuses one
    buffer across steps, since allocating T × |r| afresh each step costs as much as filling it.
    """
    readers = _readers_by_task(losses, representation)
    total = _scaled_total(losses, scale)
    if readers is None:
        rows = head_gradients(losses, representation)
        grads: list[Tensor | None] = (
            list(torch.autograd.grad(total, list(params), retain_graph=True, allow_unused=True))
            if params
            else []
        )
        return rows, grads
    shape = (len(losses), *representation.shape)
    like: dict[str, Any] = {"dtype": representation.dtype, "device": representation.device}
    if out is None or out.shape != shape or {"dtype": out.dtype, "device": out.device} != like:
        out = torch.empty(shape, **like)
    written = [False] * len(losses)

    def keep(task: int, slots: list[int]) -> Callable[..., tuple[Tensor | None, ...]]:
        def hook(grad_inputs: tuple[Tensor | None, ...], _: object) -> tuple[Tensor | None, ...]:
            for k in slots:
                g = grad_inputs[k]
                if g is None:
                    continue
                if written[task]:
                    out[task].add_(g)
                else:
                    out[task].copy_(g)
                    written[task] = True
            # r's own total Σ_i ∂L_i/∂r is not needed: do not accumulate it
            return tuple(None if k in slots else g for k, g in enumerate(grad_inputs))

        return hook

    handles = [node.register_hook(keep(task, slots)) for node, slots, task in readers]
    try:
        passed = torch.autograd.grad(
            total, [representation, *params], retain_graph=True, allow_unused=True
        )[1:]
    finally:
        for h in handles:
            h.remove()
    for task, done in enumerate(written):
        if not done:  # the task does not read r
            out[task].zero_()
    if scale != 1.0:
        out /= scale
    return out, list(passed)


#: autograd nodes of a linear map y = r M (+ b) that reads r, and the input slot where it does
_LINEAR_READERS = {"AddmmBackward0": 1, "MmBackward0": 0}


@dataclass
class HeadFactors:
    """The heads' rows ∂L_i/∂r in factored form, for heads that read r through linear maps.

    Each reader k (a head's linear map y_k = r M_kᵀ + b_k on a 2-D r, N × d) contributes
    δ_k M_k to its task's row, with δ_k = ∂L/∂y_k (N × o_k) taken at the map's output and M_k
    (o_k × d) its weight: row_i = Σ_{k of task i} δ_k M_k. The T × N × d rows are never
    formed. With Δ = [δ_1 … δ_K] (N × O) and M = [M_1; …; M_K] (O × d),

        G_ij = Σ_{k of i, l of j} ⟨δ_k M_k, δ_l M_l⟩ = Σ_{k, l} (ΔᵀΔ)_kl ⊙ (M Mᵀ)_kl,

    summed over the blocks of tasks i and j: O²(N + d) products instead of T² N d (cheaper
    whenever the heads' first maps are narrower than √(N d / (N + d)), about 13 for N = 256,
    d = 512), and Σ_i w_i row_i = (Δ diag(w_task(k))) M.
    """

    deltas: list[Tensor]  # δ_k, N × o_k
    maps: list[Tensor]  # M_k, o_k × d
    owners: list[int]  # the task of each reader
    tasks: int

    @cached_property
    def _stacked(self) -> tuple[Tensor, Tensor]:
        """Δ (N × O) and M (O × d), computed once."""
        dtype = torch.promote_types(self.deltas[0].dtype, torch.float32)
        delta = torch.cat([d.to(dtype) for d in self.deltas], dim=1)  # N × O
        maps = torch.cat([m.to(dtype) for m in self.maps], dim=0)  # O × d
        return delta, maps

    @cached_property
    def _width(self) -> int | None:
        """o when every task has exactly one map, all of width o, in task order (the columns
        of task i are then i·o … (i + 1)·o − 1, and a sum over a task's columns is a reshape);
        None otherwise."""
        widths = {d.shape[1] for d in self.deltas}
        if self.owners != list(range(self.tasks)) or len(widths) != 1:
            return None
        return widths.pop()

    @cached_property
    def _owner(self) -> Tensor:
        """The task of each of the O columns."""
        device = self.deltas[0].device
        sizes = torch.tensor([d.shape[1] for d in self.deltas], device=device)
        return torch.repeat_interleave(torch.tensor(self.owners, device=device), sizes)

    def _per_column(self, values: Tensor) -> Tensor:
        """``values`` (T × …) repeated for each column of its task (O × …)."""
        width = self._width
        if width is None:
            return values[self._owner]
        return values.repeat_interleave(width, dim=0)

    def _task_sums(self, per_column: Tensor) -> Tensor:
        """Σ over each task's columns of ``per_column`` (O × …): T × …."""
        width = self._width
        if width is not None:
            return per_column.view(self.tasks, width, *per_column.shape[1:]).sum(dim=1)
        out = per_column.new_zeros(self.tasks, *per_column.shape[1:])
        return out.index_add_(0, self._owner, per_column)

    def gram(self) -> Tensor:
        """G = R Rᵀ of the rows R (T × T), from the factors."""
        delta, maps = self._stacked
        n, d, o = delta.shape[0], maps.shape[1], delta.shape[1]
        if o * o * (n + d) > self.tasks * self.tasks * n * d:  # wide maps: the rows are cheaper
            return row_gram(self.rows())
        products = (delta.T @ delta) * (maps @ maps.T)  # O × O
        return self._task_sums(self._task_sums(products).T)  # symmetric: Σ over rows, columns

    def rows(self) -> Tensor:
        """The rows themselves, T × (N·d)."""
        delta, maps = self._stacked
        width = self._width
        if width is not None:  # one batched product, no zero fill
            per_task = delta.view(delta.shape[0], self.tasks, width).transpose(0, 1)  # T × N × o
            return torch.bmm(per_task, maps.view(self.tasks, width, -1)).reshape(self.tasks, -1)
        out = delta.new_zeros(self.tasks, delta.shape[0], maps.shape[1])
        start = 0
        for k, task in enumerate(self.owners):
            width_k = self.deltas[k].shape[1]
            out[task] += delta[:, start : start + width_k] @ maps[start : start + width_k]
            start += width_k
        return out.reshape(self.tasks, -1)

    def blends_into(self, target: Tensor) -> bool:
        """Whether :meth:`blend_into` can write into ``target`` in place (the factors' dtype and
        device, contiguous, T × (N·d))."""
        delta, maps = self._stacked
        return (
            target.dtype == delta.dtype
            and target.device == delta.device
            and target.is_contiguous()
            and target.shape == (self.tasks, delta.shape[0] * maps.shape[1])
        )

    def blend_into(self, target: Tensor, weight: float) -> None:
        """target ← (1 − weight)·target + weight·rows, in place (T × (N·d), see
        :meth:`blends_into`): one batched product added into ``target`` when every task has one
        map of one width, so the rows are never formed; else through :meth:`rows`."""
        delta, maps = self._stacked
        width = self._width
        if width is None:
            target.mul_(1.0 - weight).add_(self.rows(), alpha=weight)
            return
        per_task = delta.view(delta.shape[0], self.tasks, width).transpose(0, 1)  # T × N × o
        blended = target.view(self.tasks, delta.shape[0], maps.shape[1])
        blended.baddbmm_(
            per_task, maps.view(self.tasks, width, -1), beta=1.0 - weight, alpha=weight
        )

    def combine(self, weights: Tensor) -> Tensor:
        """Σ_i w_i row_i (N × d): the seed of one backward pass through the encoder."""
        delta, maps = self._stacked
        return (delta * self._per_column(weights.to(delta.dtype))) @ maps

    def combine_features(self, coefficients: Tensor) -> Tensor:
        """Σ_i row_i ⊙ c_i (N × d) for per-task, per-feature coefficients c (T × d, the same
        for every sample): Δ (M ⊙ c_task(k)), N·O·d products, the rows never formed."""
        delta, maps = self._stacked
        return delta @ (maps * self._per_column(coefficients.to(delta.dtype)))

    def feature_sums(self, weight: Tensor) -> Tensor:
        """Σ_n weight_n ⊙ row_i,n for every task i (T × d): each row summed over the batch with
        the elementwise sample weights ``weight`` (N × d), from (Δᵀ weight) ⊙ M summed over each
        task's columns."""
        delta, maps = self._stacked
        return self._task_sums(maps * (delta.T @ weight.to(delta.dtype)))

    def inner(self, other: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """⟨row_i, other⟩ for every task i (length T), ``other`` N × d: J·other, computed in
        ``dtype`` (the factors' own by default)."""
        delta, maps = self._stacked
        dtype = dtype or delta.dtype
        return self._task_sums((maps.to(dtype) * (delta.to(dtype).T @ other.to(dtype))).sum(dim=1))


def head_factors(
    losses: Sequence[Tensor],
    representation: Tensor,
    params: Sequence[Tensor],
    *,
    scale: float = 1.0,
) -> tuple[HeadFactors, list[Tensor | None]] | None:
    """The rows ∂L_i/∂r as :class:`HeadFactors`, and ``scale`` · ∇ Σ_i L_i for ``params``, in
    one backward pass of the heads that never computes a gradient with respect to r.

    Applies when r is 2-D, every autograd node that reads r is a linear map reading it as its
    input (``F.linear`` on a matrix: ``addmm``/``mm`` with r first) and belongs to one task's
    graph, and ``params`` is not empty (the pass needs inputs); None otherwise, and
    :func:`head_passes` gives the rows. A pre-hook on each map's node keeps δ_k, the gradient at
    its output; since r is not an input of the pass, autograd computes no gradient for it.
    """
    if representation.dim() != 2 or not params:
        return None
    readers = _readers_by_task(losses, representation)
    if not readers:
        return None
    maps: list[Tensor] = []
    for node, slots, _ in readers:
        slot = _LINEAR_READERS.get(type(node).__name__)
        if slot is None or slots != [slot] or getattr(node, "_saved_alpha", 1) != 1:
            return None
        mat2 = getattr(node, "_saved_mat2", None)
        if not isinstance(mat2, Tensor) or mat2.dim() != 2:
            return None
        maps.append(mat2.T.detach())  # o × d; detached: G and the seed need no graph
    deltas: list[Tensor | None] = [None] * len(readers)

    def keep(k: int) -> Callable[[tuple[Tensor | None, ...]], None]:
        def hook(grad_outputs: tuple[Tensor | None, ...]) -> None:
            deltas[k] = grad_outputs[0]

        return hook

    handles = [node.register_prehook(keep(k)) for k, (node, _, _) in enumerate(readers)]
    total = _scaled_total(losses, scale)
    try:
        grads: list[Tensor | None] = list(
            torch.autograd.grad(total, list(params), retain_graph=True, allow_unused=True)
        )
    finally:
        for h in handles:
            h.remove()
    if any(d is None for d in deltas):
        # a map the pass did not reach (a head frozen up to it: no input of the pass lies
        # behind it): its task's row is unknown here, so the rows are taken explicitly
        return None
    kept = [d if scale == 1.0 else d / scale for d in deltas if d is not None]
    factors = HeadFactors(kept, maps, [task for _, _, task in readers], len(losses))
    return factors, grads


def _readers_by_task(
    losses: Sequence[Tensor], representation: Tensor
) -> list[tuple[torch.autograd.graph.Node, list[int], int]] | None:
    """(node, the input slots where it reads r, its task) for every autograd node that reads
    r, found by walking each loss's graph down to r; None when a node is in several tasks'
    graphs or r has no autograd node."""
    target, number = representation.grad_fn, representation.output_nr
    if target is None:
        return None
    owner: dict[int, tuple[torch.autograd.graph.Node, list[int], int]] = {}
    for task, loss in enumerate(losses):
        seen: set[int] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            edges = node.next_functions
            slots = [k for k, (fn, nr) in enumerate(edges) if fn is target and nr == number]
            if slots:
                if id(node) in owner:  # already claimed by another task
                    return None
                owner[id(node)] = (node, slots, task)
            stack.extend(fn for fn, _ in edges if fn is not None and fn is not target)
    return list(owner.values())


def per_task_gradients(
    losses: Tensor,
    inputs: Sequence[Tensor],
    representation: Tensor | None,
    head_rows: Tensor | None,
    chunk_size: int | None,
    passes: bool = False,
) -> list[Tensor | None]:
    """Per-task gradients of ``inputs``: through the representation when given, else directly;
    ``passes``: one backward pass per task (:func:`batched_grad`)."""
    if representation is not None:
        if head_rows is None:
            head_rows = head_gradients(losses, representation)
        return batched_grad(representation, inputs, head_rows, chunk_size=chunk_size, passes=passes)
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return batched_grad(losses, inputs, eye, chunk_size=chunk_size, passes=passes)


def task_jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
    passes: bool = False,
) -> Tensor:
    """The T × P Jacobian of the loss vector with respect to ``inputs`` (flattened, concatenated).

    With ``representation`` r, the losses must reach ``inputs`` only through r (true of hard
    parameter sharing): rows ∂L_i/∂r come from :func:`head_gradients` (or ``head_rows`` when
    already computed) and are pushed through the encoder in one batched pass. Unused inputs
    give zero columns. ``passes``: one backward pass per task instead (:func:`passes_pay`).
    """
    t = losses.shape[0]
    grads = per_task_gradients(losses, inputs, representation, head_rows, chunk_size, passes)
    rows = [
        (
            g if g is not None else torch.zeros((t, *x.shape), dtype=x.dtype, device=x.device)
        ).reshape(t, -1)
        for g, x in zip(grads, inputs, strict=True)
    ]
    return torch.cat(rows, dim=1)


def last_shared_parameters(model: nn.Module, shared: Sequence[Tensor]) -> list[nn.Parameter]:
    """The parameters of the model's last shared layer.

    ``model.last_shared_parameters()`` when the model defines it; otherwise the parameters of
    the last module, in registration order, whose own parameters are all shared.
    """
    getter = getattr(model, "last_shared_parameters", None)
    if getter is not None:
        return [p for p in getter() if p.requires_grad]
    ids = {id(p) for p in shared}
    last: list[nn.Parameter] = []
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if own and all(id(p) in ids for p in own):
            last = own
    return last
