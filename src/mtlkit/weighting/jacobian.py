"""Per-task gradients and their Gram matrix, without T backward passes through the encoder.

The engine behind every gradient-based method. With T task losses L_i and the shared
parameters θ (P values), the Jacobian J is T × P (row i is ∇_θ L_i) and the Gramian is
G = J Jᵀ (T × T).

- :func:`task_jacobian`: J in one vectorised backward (``is_grads_batched``). When a
  representation r is given (the tensor every head reads), each task is first
  back-propagated through its own head only, ∂L_i/∂r, and the T rows are then pushed through
  the shared encoder together: the encoder is traversed once, batched over tasks.
- :func:`gramian` / :func:`compute_gramian`: G without forming J. Forward hooks record, for
  each shared ``nn.Linear`` / ``nn.Conv2d``, its input A and its output; one batched backward
  gives the per-task gradients Δ_i of each such output, and the layer's block of G follows from
  A and Δ alone (:func:`layer_gramian`, the cheaper of its two exact forms per layer). Shared
  parameters of other modules (norms, embeddings, ...) get exact per-parameter gradients from
  the same batched backward. This is the autogram idea of TorchJD (Quinton & Rey, 2024,
  "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232), written for mtlkit's
  model contract. The same A and Δ then give the update Jᵀw for any task weights w
  (:meth:`Gramian.combine`: the layer's weight gradient is (Σ_i w_i Δ_i)ᵀA), so a method's
  weights are applied without another backward pass through the encoder.
- :func:`head_passes`: the rows ∂L_i/∂r of every head and the task-specific (head)
  parameters' gradient of Σ_i L_i, in one backward pass through the heads.

Hooks are installed on the first call for a model, so that first step uses the explicit
Jacobian (exact, slower); from the next forward pass on, the Gramian path is used. A module
whose recorded output was changed in place afterwards (``ReLU(inplace=True)``), that was called
through ``module.forward`` (no hook), or whose records overflowed, makes the engine fall back
to the exact path for that step, so the result is always exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: records kept per module between two Gramian computations before the engine gives up on
#: the fast path for one step (a forward pass with gradients whose losses never reach a method)
MAX_RECORDS = 64


# ---------------------------------------------------------------------------- batched backward


def batched_grad(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor,
    *,
    retain_graph: bool = True,
    chunk_size: int | None = None,
) -> list[Tensor | None]:
    """∂⟨outputs, grad_outputs[i]⟩/∂inputs for every row i, in one vectorised backward.

    ``grad_outputs`` has a leading batch dimension of T rows. Rows are processed ``chunk_size``
    at a time (all at once by default) to bound memory; where vmap cannot batch an operation,
    the rows are done one by one (same result, T passes).
    """
    t = grad_outputs.shape[0]
    size = t if chunk_size is None else max(1, int(chunk_size))
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
    except RuntimeError as err:
        if "vmap" not in str(err).lower() and "batch" not in str(err).lower():
            raise
        parts = [
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
            for i in range(t)
        ]
    del retain_graph  # the graph is always kept: the method's own backward follows
    if len(parts) == 1:
        return list(parts[0])  # one chunk: no copy
    result: list[Tensor | None] = []
    for k in range(len(inputs)):
        chunks = [p[k] for p in parts]
        result.append(None if chunks[0] is None else torch.cat(chunks))  # type: ignore[arg-type]
    return result


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
    total = torch.stack(list(losses)).sum() * scale
    if readers is None:
        rows = head_gradients(losses, representation)
        grads = (
            list(torch.autograd.grad(total, list(params), retain_graph=True, allow_unused=True))
            if params
            else []
        )
        return rows, grads
    shape = (len(losses), *representation.shape)
    like = {"dtype": representation.dtype, "device": representation.device}
    if out is None or out.shape != shape or {"dtype": out.dtype, "device": out.device} != like:
        out = torch.empty(shape, **like)  # type: ignore[arg-type]
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
        grads = torch.autograd.grad(
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
    return out, list(grads)


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


def _per_task(
    losses: Tensor,
    inputs: Sequence[Tensor],
    representation: Tensor | None,
    head_rows: Tensor | None,
    chunk_size: int | None,
) -> list[Tensor | None]:
    """Per-task gradients of ``inputs``: through the representation when given, else directly."""
    if representation is not None:
        if head_rows is None:
            head_rows = head_gradients(losses, representation)
        return batched_grad(representation, inputs, head_rows, chunk_size=chunk_size)
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return batched_grad(losses, inputs, eye, chunk_size=chunk_size)


def task_jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The T × P Jacobian of the loss vector with respect to ``inputs`` (flattened, concatenated).

    With ``representation`` r, the losses must reach ``inputs`` only through r (true of hard
    parameter sharing): rows ∂L_i/∂r come from :func:`head_gradients` (or ``head_rows`` when
    already computed) and are pushed through the encoder in one batched pass. Unused inputs
    give zero columns.
    """
    t = losses.shape[0]
    grads = _per_task(losses, inputs, representation, head_rows, chunk_size)
    rows = [
        (
            g if g is not None else torch.zeros((t, *x.shape), dtype=x.dtype, device=x.device)
        ).reshape(t, -1)
        for g, x in zip(grads, inputs, strict=True)
    ]
    return torch.cat(rows, dim=1)


# ---------------------------------------------------------------------------- Gram matrices

#: column block of :func:`row_gram`'s batched product on CPU
ROW_GRAM_BLOCK = 1024


def row_gram(rows: Tensor, other: Tensor | None = None) -> Tensor:
    """The T × T matrix of inner products ``rows @ other.T`` of two T × K matrices (K ≫ T).

    On CPU a matrix product this skinny is several times slower than the same sums taken
    as a batched product over blocks of ``ROW_GRAM_BLOCK`` columns, then added up; that is
    what is done there (the same inner products, summed in a different order).
    """
    other = rows if other is None else other
    t, k = rows.shape
    blocks = k // ROW_GRAM_BLOCK
    if rows.device.type != "cpu" or blocks < 2:
        return rows @ other.T
    split = blocks * ROW_GRAM_BLOCK
    a = rows[:, :split].reshape(t, blocks, ROW_GRAM_BLOCK).transpose(0, 1)
    b = other[:, :split].reshape(other.shape[0], blocks, ROW_GRAM_BLOCK).permute(1, 2, 0)
    out = torch.bmm(a, b).sum(dim=0)
    if split < k:
        out += rows[:, split:] @ other[:, split:].T
    return out


def layer_gramian(inputs: Tensor, output_grads: Tensor, *, bias: bool = False) -> Tensor:
    """The T × T Gram block of a linear map y = W a (+ b) from its inputs and output gradients.

    ``inputs`` A is N × d (one row a_n per use of the layer), ``output_grads`` Δ is T × N × o
    (row δ_in = ∂L_i/∂y_n); ``bias`` adds the bias b, i.e. an implicit trailing column of ones
    in A (never materialised). Task i's weight gradient is Δ_iᵀ A, so

        G_st = ⟨Δ_sᵀ A, Δ_tᵀ A⟩ = Σ_{n,m} (a_n·a_m)(δ_sn·δ_tm) = ⟨Δ_s, (A Aᵀ) Δ_t⟩.

    The cheaper of the two exact forms is used: the kernel form (N × N matrix A Aᵀ, good when
    N < d) or the per-task weight gradients (T × o × d, good for convolutions where N is
    batch × positions).
    """
    t, n, o = output_grads.shape
    d = inputs.shape[1] + int(bias)
    kernel_cost = n * n * d + t * n * n * o + t * t * n * o
    explicit_cost = t * n * d * o + t * t * d * o
    flat = output_grads.reshape(t, -1)
    if kernel_cost < explicit_cost:
        kernel = inputs @ inputs.T
        if bias:
            kernel += 1.0  # the ones column adds 1 to every a_n·a_m
        kd = torch.matmul(kernel, output_grads)  # T × N × o
        return row_gram(flat, kd.reshape(t, -1))
    per_task = torch.matmul(output_grads.transpose(1, 2), inputs).reshape(t, -1)  # T × (o·d)
    gram = row_gram(per_task)
    if bias:
        bias_grads = output_grads.sum(dim=1)  # T × o
        gram += bias_grads @ bias_grads.T
    return gram


def _linear_rows(module: nn.Linear, x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """(A, Δ) of a Linear call: every leading dimension is a use of the layer."""
    return x.reshape(-1, module.in_features), dy.reshape(dy.shape[0], -1, module.out_features)


def _conv_rows(module: nn.Conv2d, x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """(A, Δ) of a Conv2d call: the unfolded patches, one row per (image, output position)."""
    if x.dim() == 3:
        x, dy = x.unsqueeze(0), dy.unsqueeze(1)
    patches = F.unfold(
        x,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,  # type: ignore[arg-type]
    )  # B × (C·k·k) × L
    a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    t, b, o = dy.shape[:3]
    d = dy.reshape(t, b, o, -1).transpose(2, 3).reshape(t, -1, o)
    return a, d


def _supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


@dataclass
class _Recorder:
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


_RECORDERS: weakref.WeakKeyDictionary[nn.Module, _Recorder] = weakref.WeakKeyDictionary()


def _recorder_for(model: nn.Module, shared: Sequence[Tensor]) -> tuple[_Recorder, bool]:
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
        if own and _supported(m) and all(id(p) in ids for p in own):
            modules.append(m)
    rec = _Recorder(shared_ids=ids, modules=modules)
    rec.handles = [m.register_forward_hook(rec.hook) for m in modules]
    _RECORDERS[model] = rec
    return rec, False


def release_hooks(model: nn.Module) -> None:
    """Remove the Gramian engine's forward hooks from ``model`` (they are installed lazily)."""
    rec = _RECORDERS.pop(model, None)
    if rec is not None:
        rec.remove()


@dataclass
class Gramian:
    """G = J Jᵀ of the task losses over the shared parameters, with what it was built from.

    ``matrix`` is G (T × T). :meth:`combine` turns task weights w into the update Jᵀw, per
    shared parameter, from the same per-layer inputs and per-task output gradients that gave G
    (one product per layer), so applying the weights needs no further backward pass.
    """

    matrix: Tensor
    shared: Sequence[Tensor]
    #: per recorded module: (module, its inputs A and per-task output gradients Δ, per call)
    layers: list[tuple[nn.Module, list[Tensor], list[Tensor]]] = field(default_factory=list)
    #: per-task gradients (T × shape) of the shared parameters outside recorded modules
    rest: dict[int, Tensor] = field(default_factory=dict)
    #: the explicit T × P Jacobian, when G was computed from it
    jacobian: Tensor | None = None

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
                gw, gb = mixed.T @ a, mixed.sum(dim=0)
                weight_grad = gw if weight_grad is None else weight_grad + gw
                bias_grad = gb if bias_grad is None else bias_grad + gb
            assert weight_grad is not None and bias_grad is not None
            out[id(m.weight)] = weight_grad.view_as(m.weight)
            if m.bias is not None:
                out[id(m.bias)] = bias_grad
        for key, g in self.rest.items():
            out[key] = torch.tensordot(weights.to(g), g, dims=1)
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
    model: nn.Module,
    shared: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
) -> Gramian:
    """:func:`compute_gramian`, returned as a :class:`Gramian` that can also apply weights."""
    rec, existed = _recorder_for(model, shared)
    calls, overflow = dict(rec.calls), rec.overflow
    rec.clear()

    def explicit() -> Gramian:
        jac = task_jacobian(
            losses,
            shared,
            representation=representation,
            head_rows=head_rows,
            chunk_size=chunk_size,
        )
        return Gramian(row_gram(jac), shared, jacobian=jac)

    if not existed or overflow:
        return explicit()
    # modules whose records are usable; the others fall back to exact per-parameter gradients
    entries: list[tuple[nn.Module, Tensor, Tensor]] = []
    covered: set[int] = set()
    for m in rec.modules:
        records = calls.get(id(m), [])
        if any(x._version != vx or y._version != vy for x, y, vx, vy in records):
            continue
        covered.update(id(p) for p in m.parameters(recurse=False))
        entries.extend((m, x, y) for x, y, _, _ in records)
    rest = [p for p in shared if id(p) not in covered]
    grads = _per_task(
        losses, [y for _, _, y in entries] + rest, representation, head_rows, chunk_size
    )
    by_module: dict[int, tuple[nn.Module, list[Tensor], list[Tensor]]] = {}
    for (m, x, _), dy in zip(entries, grads[: len(entries)], strict=True):
        if dy is None:  # a recorded call that these losses do not depend on
            continue
        rows = _linear_rows if isinstance(m, nn.Linear) else _conv_rows
        a, d = rows(m, x.detach(), dy)  # type: ignore[arg-type]
        slot = by_module.setdefault(id(m), (m, [], []))
        slot[1].append(a)
        slot[2].append(d)
    unused_hooked = [
        p
        for m in rec.modules
        if id(m) not in by_module
        for p in m.parameters(recurse=False)
        if id(p) in covered
    ]
    if unused_hooked and _reaches(losses, unused_hooked):
        # a hooked layer took part without being recorded (called via .forward, or the hooks
        # were added after the forward pass): recompute exactly
        return explicit()
    t = losses.shape[0]
    gram = torch.zeros(t, t, dtype=losses.dtype, device=losses.device)
    for m, a_list, d_list in by_module.values():
        a = a_list[0] if len(a_list) == 1 else torch.cat(a_list)
        d = d_list[0] if len(d_list) == 1 else torch.cat(d_list, dim=1)
        gram += layer_gramian(a, d, bias=m.bias is not None).to(gram.dtype)  # type: ignore[arg-type]
    per_param: dict[int, Tensor] = {}
    for p, g in zip(rest, grads[len(entries) :], strict=True):
        if g is not None:
            gram += row_gram(g.reshape(t, -1)).to(gram.dtype)
            per_param[id(p)] = g
    return Gramian(gram, shared, layers=list(by_module.values()), rest=per_param)


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
    """Task-gradient norms and pairwise cosines from the Gram matrix G = J Jᵀ."""
    g = gram.detach().double()
    norms = g.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, g / denom.clamp_min(1e-300), torch.zeros_like(g))
    return dict(zip(tasks, norms.tolist(), strict=True)), cos.tolist()


def effective_weights(gram: Tensor, jacobian: Tensor, update: Tensor) -> Tensor:
    """The least-squares task weights w with Jᵀw ≈ update: w = G⁺ J update (minimum norm)."""
    rhs = (jacobian.double() @ update.double()).unsqueeze(1)
    return (torch.linalg.pinv(gram.double(), hermitian=True) @ rhs)[:, 0]


def last_shared_parameters(model: nn.Module, shared: Sequence[Tensor]) -> list[Tensor]:
    """The parameters of the model's last shared layer.

    ``model.last_shared_parameters()`` when the model defines it; otherwise the parameters of
    the last module, in registration order, whose own parameters are all shared.
    """
    getter = getattr(model, "last_shared_parameters", None)
    if getter is not None:
        return [p for p in getter() if p.requires_grad]
    ids = {id(p) for p in shared}
    last: list[Tensor] = []
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if own and all(id(p) in ids for p in own):
            last = own
    return last
