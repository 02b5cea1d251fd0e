"""The Gram matrix G = J Jᵀ of the task gradients, built layer by layer without forming J.

Forward hooks (:mod:`mtlkit.weighting._engine.hooks`) record, for each shared ``nn.Linear`` /
``nn.Conv2d``, its input A and its output; one batched backward gives the per-task gradients
Δ_i of each such output, and the layer's block of G follows from A and Δ alone
(:func:`layer_gramian`, the cheaper of its two exact forms per layer). Shared parameters of
other modules (norms, embeddings, ...) get exact per-parameter gradients from the same batched
backward. This is the autogram idea of TorchJD (Quinton & Rey, 2024, "Jacobian Descent for
Multi-Objective Optimization", arXiv:2406.16232), written for mtlkit's model contract. The
same A and Δ then give the update Jᵀw for any task weights w (:meth:`Gramian.combine`: the
layer's weight gradient is (Σ_i w_i Δ_i)ᵀA), so a method's weights are applied without another
backward pass through the encoder.

Hooks are installed on the first call for a model, so that first step uses the explicit
Jacobian (exact, slower); from the next forward pass on, the Gramian path is used. A module
whose recorded output was changed in place afterwards (``ReLU(inplace=True)``), that was called
through ``module.forward`` (no hook), or whose records overflowed, makes the engine fall back
to the exact path for that step, so the result is always exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.weighting._engine.backward import per_task_gradients, task_jacobian
from mtlkit.weighting._engine.hooks import compiled, recorder_for

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
        padding=module.padding,  # type: ignore[arg-type]  # not a str: see supported()
        stride=module.stride,
    )  # B × (C·k·k) × L
    a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    t, b, o = dy.shape[:3]
    d = dy.reshape(t, b, o, -1).transpose(2, 3).reshape(t, -1, o)
    return a, d


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
    model: nn.Module | None,
    shared: Sequence[Tensor],
    *,
    representation: Tensor | None = None,
    head_rows: Tensor | None = None,
    chunk_size: int | None = None,
) -> Gramian:
    """:func:`compute_gramian`, returned as a :class:`Gramian` that can also apply weights.
    Without a ``model`` (no module to hook) G comes from the explicit Jacobian."""

    def explicit() -> Gramian:
        jac = task_jacobian(
            losses,
            shared,
            representation=representation,
            head_rows=head_rows,
            chunk_size=chunk_size,
        )
        return Gramian(row_gram(jac), shared, jacobian=jac)

    if model is None or compiled(model):
        return explicit()
    rec, existed = recorder_for(model, shared)
    calls, overflow = dict(rec.calls), rec.overflow
    rec.clear()
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
    if not entries and not rest:  # no layer was recorded (hooks bypassed): recompute exactly
        return explicit()
    grads = per_task_gradients(
        losses, [y for _, _, y in entries] + rest, representation, head_rows, chunk_size
    )
    by_module: dict[int, tuple[nn.Module, list[Tensor], list[Tensor]]] = {}
    for (m, x, _), dy in zip(entries, grads[: len(entries)], strict=True):
        if dy is None:  # a recorded call that these losses do not depend on
            continue
        rows = _linear_rows if isinstance(m, nn.Linear) else _conv_rows
        # under autocast the recorded inputs and output gradients can be bf16/fp16 and differ
        # in dtype: the products are taken in float32 at least
        dtype = torch.promote_types(torch.promote_types(x.dtype, dy.dtype), torch.float32)
        a, d = rows(m, x.detach().to(dtype), dy.to(dtype))  # type: ignore[arg-type]
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
        gram += layer_gramian(a, d, bias=m.bias is not None).to(gram.dtype)
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
    weights: Tensor = (torch.linalg.pinv(gram.double(), hermitian=True) @ rhs)[:, 0]
    return weights
