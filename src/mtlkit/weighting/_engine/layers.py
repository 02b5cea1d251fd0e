"""Per-layer rules of the layer-wise Gramian: which modules have one, their per-task parameter
gradients from a recorded input and per-task output gradients, and fast backward passes for
convolutions and batch norm.

A shared module's block of G = J Jᵀ only needs its input x (recorded by a forward hook,
:mod:`~mtlkit.weighting._engine.hooks`) and the per-task gradients Δ_i = ∂L_i/∂y of its
output y (one batched backward):

- ``nn.Conv1d`` / ``nn.Conv2d`` (any stride, padding, dilation, groups, depthwise): task i's
  weight gradient is the correlation of x with Δ_i; the T of them come from *one*
  ``convolution_backward`` whose output channels are the T tasks' channels side by side
  (:func:`conv_task_grads`);
- ``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm``, ``nn.GroupNorm`` (affine): with x̂ the normalised
  input, ∂L_i/∂γ = Σ Δ_i ⊙ x̂ and ∂L_i/∂β = Σ Δ_i over every axis but the parameter's
  (:func:`norm_task_grads`);
- ``nn.Embedding`` (``padding_idx``, repeated indices, ``scale_grad_by_freq``): task i's
  gradient is Δ_i's rows added into the rows of the looked-up indices; only the U distinct
  indices are kept (T × U × D, :func:`embedding_task_grads`);
- ``nn.Linear`` is handled by :func:`mtlkit.weighting._engine.gram.layer_gramian`.

PyTorch's batched backward (``is_grads_batched``) runs ``convolution_backward`` and
``native_batch_norm_backward`` once per task. While the hooks are installed, the output of a
recorded convolution or batch norm is therefore routed through an autograd function with the
same value (:class:`ConvOutput`, :class:`BatchNormOutput`) whose backward, when given the T
task rows at once, folds the task dimension into the batch dimension: one convolution
(transposed) serves all T tasks. Its ordinary (unbatched) backward is the native one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONVS = (nn.Conv1d, nn.Conv2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NORMS = (*BATCH_NORMS, nn.LayerNorm, nn.GroupNorm)
#: an ungrouped convolution whose patches (input channels × kernel size) are at most this long
#: takes its per-task weight gradients from the unfolded input (cheap to unfold: a first
#: layer on a few channels); longer patches go through one folded convolution_backward
UNFOLD_PATCH = 64
#: ... and only from this many tasks on: unfolding costs about as much as 3–5 tasks' folded
#: weight gradients (measured on the benchmark CNN's first layer, one x86 core)
UNFOLD_MIN_TASKS = 4

#: modules whose parameters' per-task gradients come from their routed output's batched
#: backward (folded over tasks) rather than from recorded output gradients
FOLDED = (*CONVS, *BATCH_NORMS)

#: ids of the parameters whose gradients the engine's current batched pass asks for; None
#: outside such a pass (then every parameter that requires a gradient gets one)
_REQUESTED: set[int] | None = None


#: in a lean Gramian pass: ids of the Linear weights whose Gram block is taken as their
#: per-task output gradients pass by (then dropped), and the blocks, by weight id
_SINK: tuple[set[int], dict[int, Tensor]] | None = None


@contextmanager
def sinking(weights: Sequence[Tensor]) -> Iterator[dict[int, Tensor]]:
    """Within the block, the batched backward of the routed Linear layers with these weights
    adds each layer's T × T Gram block to the returned dict (by weight id) and gives no
    gradient for the weight: the per-task output gradients are never all held at once."""
    global _SINK
    blocks: dict[int, Tensor] = {}
    previous, _SINK = _SINK, ({id(w) for w in weights}, blocks)
    try:
        yield blocks
    finally:
        _SINK = previous


@contextmanager
def requesting(params: Sequence[Tensor]) -> Iterator[None]:
    """Within the block, the recorded layers' backward computes parameter gradients only
    for ``params`` (the engine asks for output gradients of the others)."""
    global _REQUESTED
    previous, _REQUESTED = _REQUESTED, {id(p) for p in params}
    try:
        yield
    finally:
        _REQUESTED = previous


def kind_of(module: nn.Module) -> str | None:
    """'linear', 'conv', 'norm' or 'embedding' for a module with a layer-wise Gram block."""
    t = type(module)
    if t is nn.Linear:
        return "linear"
    if t in CONVS:
        conv: Any = module
        ok = conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
        return "conv" if ok else None
    if t in NORMS:
        return "norm" if getattr(module, "weight", None) is not None else None
    if t is nn.Embedding:
        emb: Any = module
        return "embedding" if emb.max_norm is None and not emb.sparse else None
    return None


# ------------------------------------------------------------------- Gram products

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


# ---------------------------------------------------------------- legacy-vmap batched rows


def _batch_level(t: Tensor) -> int | None:
    """The vmap level of a gradient batched by ``is_grads_batched``; None when not batched."""
    if not torch._C._functorch.is_legacy_batchedtensor(t):
        return None
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return int(level) - 1


def _unbatch(t: Tensor, level: int) -> Tensor:
    out: Tensor = torch._remove_batch_dim(t, level, 1, 0)
    return out


def _rebatch(t: Tensor | None, level: int) -> Tensor | None:
    return None if t is None else torch._add_batch_dim(t, 0, level)


def _alias(out: Tensor) -> Tensor:
    """A tensor on ``out``'s memory that autograd does not see as a view (so that an in-place
    operation on a custom function's output is allowed)."""
    alias = out.new_empty(0)
    alias.set_(out.untyped_storage(), out.storage_offset(), out.size(), out.stride())
    return alias


# ---------------------------------------------------------------------------- convolutions


def _conv_spec(m: Any) -> dict[str, Any]:
    return {
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "groups": int(m.groups),
    }


def _conv_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    spec: dict[str, Any],
    mask: list[bool],
    bias_sizes: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``aten.convolution_backward`` of a (non-transposed) convolution with ``spec``'s stride,
    padding, dilation and groups; ``mask`` picks (input, weight, bias) gradients."""
    out: tuple[Tensor, Tensor, Tensor] = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        bias_sizes,
        spec["stride"],
        spec["padding"],
        spec["dilation"],
        False,
        [0] * len(spec["stride"]),
        spec["groups"],
        mask,
    )
    return out


def conv_task_grads(
    x: Tensor, deltas: Tensor, weight_shape: Sequence[int], spec: dict[str, Any], bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-task weight (T × weight shape) and bias (T × C_out) gradients of a convolution.

    One ``convolution_backward`` for all T tasks: the tasks' output gradients become the
    output channels of one convolution with T·C_out channels (ordered group, task, channel so
    that grouped and depthwise convolutions keep their groups).
    """
    t, b, c_out = deltas.shape[:3]
    spatial = deltas.shape[3:]
    g = spec["groups"]
    if _unfold_pays(spec, weight_shape, t):
        return _unfolded_task_grads(x, deltas, weight_shape, spec, bias)
    folded = (
        deltas.reshape(t, b, g, c_out // g, *spatial)
        .transpose(0, 1)
        .transpose(1, 2)
        .reshape(b, g * t * c_out // g, *spatial)
    )
    shape = (g * t * (c_out // g), *weight_shape[1:])
    (_, gw, _) = _conv_backward(
        folded, x, x.new_zeros(()).expand(*shape), spec, [False, True, False]
    )
    weight = gw.reshape(g, t, c_out // g, *weight_shape[1:]).transpose(0, 1)
    weight = weight.reshape(t, *weight_shape)
    bias_grads = deltas.sum(dim=(1, *range(3, deltas.dim()))) if bias else None
    return weight, bias_grads


def _unfold_pays(spec: dict[str, Any], weight_shape: Sequence[int], tasks: int) -> bool:
    """Whether ``tasks`` per-task weight gradients of a convolution come cheaper from its
    unfolded input patches than from one folded ``convolution_backward``: an ungrouped 1-d or
    2-d convolution with short patches, and enough tasks to pay for the unfolding."""
    return (
        spec["groups"] == 1
        and len(spec["stride"]) in (1, 2)
        and math.prod(weight_shape[1:]) <= UNFOLD_PATCH
        and tasks >= UNFOLD_MIN_TASKS
    )


def _patches(x: Tensor, weight_shape: Sequence[int], spec: dict[str, Any]) -> Tensor:
    """The unfolded input patches P of an ungrouped 1-d or 2-d convolution, B × L × C·k."""
    two_d = len(spec["stride"]) == 2
    k = list(weight_shape[2:]) if two_d else [1, weight_shape[2]]
    pad = spec["padding"] if two_d else [0, spec["padding"][0]]
    stride = spec["stride"] if two_d else [1, spec["stride"][0]]
    dil = spec["dilation"] if two_d else [1, spec["dilation"][0]]
    images = x if two_d else x.unsqueeze(2)
    patches = F.unfold(
        images, tuple(k), dilation=tuple(dil), padding=tuple(pad), stride=tuple(stride)
    )  # B × C·k × L
    return patches.transpose(1, 2).contiguous()


def _unfolded_task_grads(
    x: Tensor,
    deltas: Tensor,
    weight_shape: Sequence[int],
    spec: dict[str, Any],
    bias: bool,
    patches: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`conv_task_grads` for an ungrouped convolution from the unfolded input patches
    P (B × L × C·k, once; or given) and, per task, the batched product Δ_i[b] (o × L) · P[b]
    summed over the batch: no copy of the T output gradients (they are read in place)."""
    t, b, c_out = deltas.shape[:3]
    if patches is None:
        patches = _patches(x, weight_shape, spec)
    rows = deltas.reshape(t, b, c_out, -1)
    out = deltas.new_empty(t, c_out, patches.shape[2])
    for i in range(t):
        torch.sum(torch.bmm(rows[i], patches), dim=0, out=out[i])
    bias_grads = rows.sum(dim=(1, 3)) if bias else None
    return out.reshape(t, *weight_shape), bias_grads


def _conv_input_grads(deltas: Tensor, x: Tensor, weight: Tensor, spec: dict[str, Any]) -> Tensor:
    """∂⟨y, Δ_i⟩/∂x for every task at once: the tasks are folded into the batch dimension
    (one ``convolution_backward``; channels-last for 2-d, which oneDNN runs without the
    layout copies it makes for the default layout on CPU)."""
    t = deltas.shape[0]
    folded = deltas.reshape(t * deltas.shape[1], *deltas.shape[2:])
    shape = (folded.shape[0], *x.shape[1:])
    if folded.dim() == 4 and folded.device.type == "cpu":
        fmt = torch.channels_last
        folded, weight = folded.contiguous(memory_format=fmt), weight.contiguous(memory_format=fmt)
        placeholder = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    else:
        placeholder = x.new_zeros(()).expand(*shape)
    # only the placeholder's shape is read for the input gradient
    (dx, _, _) = _conv_backward(folded, placeholder, weight, spec, [True, False, False])
    out: Tensor = dx.reshape(t, *x.shape).contiguous()  # the next backward ops run fastest on it
    return out


class ConvOutput(torch.autograd.Function):
    """The output of a recorded convolution, with a backward that batches tasks by folding."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor, spec: dict[str, Any]
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.spec, ctx.ids = spec, (id(weight), id(bias) if bias is not None else None)
        ctx.has_bias = bias is not None
        return _alias(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        req = _REQUESTED
        need_x = bool(ctx.needs_input_grad[0])
        need_w = ctx.needs_input_grad[1] and (req is None or ctx.ids[0] in req)
        need_b = ctx.has_bias and ctx.needs_input_grad[2] and (req is None or ctx.ids[1] in req)
        dtype = grad.dtype
        xd, wd = x.to(dtype), weight.to(dtype)
        spec = ctx.spec
        dx: Tensor | None
        dw: Tensor | None
        db: Tensor | None
        with torch.autocast(grad.device.type, enabled=False):
            level = _batch_level(grad)
            if level is None:
                dx, dw, db = _conv_backward(
                    grad,
                    xd,
                    wd,
                    spec,
                    [need_x, bool(need_w), bool(need_b)],
                    [grad.shape[1]] if need_b else None,
                )
            else:
                rows = _unbatch(grad, level)
                if xd.dim() == len(spec["stride"]) + 1:  # an unbatched call: a batch of one
                    xd, rows = xd.unsqueeze(0), rows.unsqueeze(1)
                dx = None
                if need_x:
                    dx = _rebatch(
                        _conv_input_grads(rows, xd, wd, spec).reshape(-1, *x.shape), level
                    )
                dw = db = None
                if need_w or need_b:
                    gw, gb = conv_task_grads(xd, rows, weight.shape, spec, bool(need_b))
                    dw = _rebatch(gw, level) if need_w else None
                    db = _rebatch(gb, level) if need_b else None
        return (
            None if dx is None or not need_x else dx.to(x.dtype),
            None if dw is None or not need_w else dw.to(weight.dtype),
            None if db is None or not need_b else db.to(weight.dtype),
            None,
            None,
        )


def conv_output(module: Any, x: Tensor, out: Tensor) -> Tensor:
    """``out`` routed through :class:`ConvOutput` (same value, faster batched backward)."""
    spec = _conv_spec(module)
    y: Tensor = ConvOutput.apply(x, module.weight, module.bias, out.detach(), spec)  # type: ignore[no-untyped-call]
    return y


# ---------------------------------------------------------------------------------- linear


class LinearOutput(torch.autograd.Function):
    """The output of a recorded Linear layer, with a backward that can take the layer's Gram
    block on the fly (see :func:`sinking`) instead of a per-task weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.ids = (id(weight), id(bias) if bias is not None else None)
        ctx.has_bias = bias is not None
        return _alias(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        req, sink = _REQUESTED, _SINK
        need_x = bool(ctx.needs_input_grad[0])
        need_w = ctx.needs_input_grad[1] and (req is None or ctx.ids[0] in req)
        need_b = ctx.has_bias and ctx.needs_input_grad[2] and (req is None or ctx.ids[1] in req)
        level = _batch_level(grad)
        g = grad if level is None else _unbatch(grad, level)
        dtype = g.dtype
        dx = dw = db = None
        if need_x:
            dx = torch.matmul(g, weight.to(dtype)).to(x.dtype)
        if level is not None and sink is not None and ctx.ids[0] in sink[0]:
            t = g.shape[0]
            wide = torch.promote_types(torch.promote_types(x.dtype, dtype), torch.float32)
            a = x.detach().to(wide).reshape(-1, x.shape[-1])
            d = g.to(wide).reshape(t, -1, g.shape[-1])
            block = layer_gramian(a, d, bias=ctx.has_bias)
            blocks = sink[1]
            key = ctx.ids[0]
            blocks[key] = block if key not in blocks else blocks[key] + block
            need_w = need_b = False
        if need_w or need_b:
            lead = g.dim() - x.dim()
            rows = g.reshape(*g.shape[:lead], -1, g.shape[-1])  # [T ×] N × o
            a = x.reshape(-1, x.shape[-1]).to(dtype)
            if need_w:
                dw = (rows.transpose(-1, -2) @ a).to(weight.dtype)
            if need_b:
                db = rows.sum(dim=-2).to(weight.dtype)
        if level is not None:
            dx, dw, db = _rebatch(dx, level), _rebatch(dw, level), _rebatch(db, level)
        return dx, dw, db, None


def linear_output(module: Any, x: Tensor, out: Tensor) -> Tensor:
    """``out`` routed through :class:`LinearOutput` (same value)."""
    y: Tensor = LinearOutput.apply(x, module.weight, module.bias, out.detach())  # type: ignore[no-untyped-call]
    return y


# ------------------------------------------------------------------------------ batch norm


def _bn_uses_batch_stats(m: Any) -> bool:
    return bool(m.training or (m.running_mean is None and m.running_var is None))


def norm_stats(module: Any, x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(mean, 1/std) per channel that a batch norm normalised ``x`` with (float32 or wider);
    read from the native kernel's saved results when ``out`` has them."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    node = None if out is None else out.grad_fn
    if _bn_uses_batch_stats(module) and type(node).__name__ == "NativeBatchNormBackward0":
        mean, invstd = node._saved_result1, node._saved_result2  # type: ignore[union-attr]
        if isinstance(mean, Tensor) and isinstance(invstd, Tensor) and mean.numel() == x.shape[1]:
            return mean.detach().to(dtype), invstd.detach().to(dtype)
    with torch.no_grad():
        if _bn_uses_batch_stats(module):
            dims = [0, *range(2, x.dim())]
            var, mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
        else:
            mean, var = module.running_mean.to(dtype), module.running_var.to(dtype)
        return mean.clone(), torch.rsqrt(var + module.eps)


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def _channel_sums(g: Tensor, xhat: Tensor, lead: int) -> tuple[Tensor, Tensor]:
    """Σ g and Σ g·x̂ per (task,) channel over batch and positions, keeping dims for
    broadcasting. With task rows, one batched product reads the T rows once: per (image,
    channel), the T × S rows times x̂'s S positions, without a T-sized temporary."""
    dims = [lead, *range(lead + 2, g.dim())]
    g_sum = g.sum(dim=dims, keepdim=True)
    if not lead or g.dim() < 3 or not g.is_contiguous() or not xhat.is_contiguous():
        return g_sum, (g * xhat).sum(dim=dims, keepdim=True)
    t, b, c = g.shape[:3]
    rows = g.reshape(t, b * c, -1).transpose(0, 1)  # (B·C) × T × S, a view
    gx = torch.bmm(rows, xhat.reshape(b * c, -1, 1)).reshape(b, c, t).sum(dim=0)  # C × T
    return g_sum, gx.T.reshape(g_sum.shape)


def _norm_scale(inv: Tensor, weight: Tensor | None, ndim: int) -> Tensor:
    """γ/σ per channel, shaped for broadcasting (1/σ without an affine weight)."""
    return inv if weight is None else inv * _channel_view(weight.to(inv.dtype), ndim)


def _norm_input_grad(
    g: Tensor, xhat: Tensor, scale: Tensor, g_sum: Tensor, gx_sum: Tensor, batch_stats: bool
) -> Tensor:
    """A batch norm's input gradient from its (task) rows ``g``: with batch statistics
    scale · (g − mean(g) − x̂ · mean(g x̂)), in two passes over the rows; else scale · g."""
    if not batch_stats:
        return scale * g
    count = xhat.numel() // xhat.shape[1]
    dx = g * scale  # (an addcmul whose first operand broadcasts is ~1.6x slower on CPU)
    dx -= scale * g_sum / count
    return dx.addcmul_(xhat, -scale * gx_sum / count)


def _norm_rows(
    grad: Tensor, x: Tensor, mean: Tensor, invstd: Tensor
) -> tuple[int | None, Tensor, int, Tensor, Tensor]:
    """A batch norm's backward inputs: the vmap level of ``grad`` (None when unbatched), its
    rows in the statistics' dtype, the number of leading task dimensions (1 or 0), x̂, and
    1/σ shaped for broadcasting."""
    level = _batch_level(grad)
    g = grad if level is None else _unbatch(grad, level)
    n = x.dim()
    inv = _channel_view(invstd, n)
    xhat = (x.to(mean.dtype) - _channel_view(mean, n)) * inv
    return level, g.to(mean.dtype), g.dim() - n, xhat, inv


class BatchNormOutput(torch.autograd.Function):
    """The output of a recorded batch norm, with a backward written in batched tensor ops."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        out: Tensor,
        stats: tuple[Tensor, Tensor],
        batch_stats: bool,
    ) -> Tensor:
        mean, invstd = stats
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.batch_stats = batch_stats
        ctx.ids = (id(weight), id(bias))
        return _alias(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        req = _REQUESTED
        need_x = bool(ctx.needs_input_grad[0])
        need_w = ctx.needs_input_grad[1] and (req is None or ctx.ids[0] in req)
        need_b = ctx.needs_input_grad[2] and (req is None or ctx.ids[1] in req)
        with torch.autocast(grad.device.type, enabled=False):
            level, g, lead, xhat, inv = _norm_rows(grad, x, mean, invstd)
            n = x.dim()
            dx = dw = db = None
            g_sum, gx_sum = _channel_sums(g, xhat, lead)
            if need_x:
                scale = _norm_scale(inv, weight, n)
                dx = _norm_input_grad(g, xhat, scale, g_sum, gx_sum, ctx.batch_stats)
                dx = dx.to(x.dtype)
            if need_w:
                assert gx_sum is not None
                dw = gx_sum.reshape(gx_sum.shape[: lead + 2]).flatten(lead).to(weight.dtype)
            if need_b:
                assert g_sum is not None
                db = g_sum.reshape(g_sum.shape[: lead + 2]).flatten(lead).to(weight.dtype)
        if level is not None:
            dx, dw, db = _rebatch(dx, level), _rebatch(dw, level), _rebatch(db, level)
        return dx, dw, db, None, None, None


def batch_norm_output(module: Any, x: Tensor, out: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``out`` routed through :class:`BatchNormOutput`, and the statistics it used."""
    stats = norm_stats(module, x, out)
    y: Tensor = BatchNormOutput.apply(  # type: ignore[no-untyped-call]
        x, module.weight, module.bias, out.detach(), stats, _bn_uses_batch_stats(module)
    )
    return y, stats


# ------------------------------------------------------------------ per-task gradients


def normalised(module: Any, x: Tensor, aux: Any) -> Tensor:
    """x̂, the input of a norm layer normalised as the layer did it (before γ and β)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    xd = x.to(dtype)
    if isinstance(module, BATCH_NORMS):
        mean, invstd = aux if aux is not None else norm_stats(module, x)
        return (xd - _channel_view(mean, x.dim())) * _channel_view(invstd, x.dim())
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(xd, module.normalized_shape, None, None, module.eps)
    assert isinstance(module, nn.GroupNorm)
    return F.group_norm(xd, module.num_groups, None, None, module.eps)


def norm_task_grads(
    module: Any, x: Tensor, deltas: Tensor, aux: Any
) -> tuple[Tensor, Tensor | None]:
    """Per-task (γ, β) gradients (T × parameter shape) of an affine norm layer."""
    xhat = normalised(module, x, aux)
    d = deltas.to(xhat.dtype)
    t = d.shape[0]
    if isinstance(module, nn.LayerNorm):
        k = len(module.normalized_shape)
        rows = d.reshape(t, -1, *d.shape[d.dim() - k :])
        gamma = torch.einsum("tn...,n...->t...", rows, xhat.reshape(-1, *rows.shape[2:]))
        beta = rows.sum(dim=1)
    else:  # channels on axis 1 of x: axis 2 of the task rows
        dims = [1, *range(3, d.dim())]
        gamma = (d * xhat).sum(dim=dims)
        beta = d.sum(dim=dims)
    return gamma, (beta if module.bias is not None else None)


def embedding_rows(module: Any, idx: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """(indices, T × n × D rows) of an embedding call: rows of ``padding_idx`` dropped, and
    each row divided by its index's count in the call under ``scale_grad_by_freq``."""
    t, dim = deltas.shape[0], module.embedding_dim
    flat = idx.reshape(-1)
    rows = deltas.reshape(t, -1, dim)
    if module.scale_grad_by_freq:
        _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        rows = rows / counts[inverse].to(rows.dtype).unsqueeze(-1)
    if module.padding_idx is not None:
        keep = flat != module.padding_idx
        flat, rows = flat[keep], rows[:, keep]
    return flat, rows


def embedding_task_grads(indices: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct indices U, T × U × D per-task gradient rows): repeated indices add up."""
    unique, inverse = torch.unique(indices, return_inverse=True)
    out = rows.new_zeros(rows.shape[0], unique.shape[0], rows.shape[2])
    out.index_add_(1, inverse, rows)
    return unique, out


# ------------------------------------------------------------ convolution then batch norm


class ConvBatchNormOutput(torch.autograd.Function):
    """The output of a batch norm whose input is a recorded convolution's output, as a
    function of the convolution's input (which needs no gradient: a first layer on the data)
    and of both layers' parameters.

    With the task rows, the batch norm's input gradient (T × the activation, two passes over
    it) is never formed: with s = γ/σ, a_i = mean(g_i) and e_i = mean(g_i x̂) per channel,
    task i's input gradient is s (g_i − a_i − x̂ e_i), and the convolution's weight gradient
    W(·) is linear in it and acts on each output channel alone, so

        ∂L_i/∂K = s · (W(g_i) − a_i W(1) − e_i W(x̂)),   ∂L_i/∂b = −s · e_i Σ x̂,

    W(g_i) from the T rows g_i as they come, W(1) and W(x̂) once for all tasks."""

    @staticmethod
    def forward(
        ctx: Any,
        x0: Tensor,
        conv_weight: Tensor,
        conv_bias: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        x1: Tensor,
        out: Tensor,
        stats: tuple[Tensor, Tensor],
        batch_stats: bool,
        spec: dict[str, Any],
    ) -> Tensor:
        mean, invstd = stats
        ctx.save_for_backward(x0, conv_weight, weight, x1, mean, invstd)
        ctx.batch_stats, ctx.spec = batch_stats, spec
        ctx.has_conv_bias = conv_bias is not None
        ctx.ids = (id(conv_weight), id(conv_bias), id(weight), id(bias))
        return _alias(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x0, conv_weight, weight, x1, mean, invstd = ctx.saved_tensors
        req = _REQUESTED
        ids, has_kb = ctx.ids, ctx.has_conv_bias
        need_k = ctx.needs_input_grad[1] and (req is None or ids[0] in req)
        need_kb = has_kb and ctx.needs_input_grad[2] and (req is None or ids[1] in req)
        need_w = ctx.needs_input_grad[3] and (req is None or ids[2] in req)
        need_b = ctx.needs_input_grad[4] and (req is None or ids[3] in req)
        spec, batch_stats = ctx.spec, ctx.batch_stats
        with torch.autocast(grad.device.type, enabled=False):
            level, g, lead, xhat, inv = _norm_rows(grad, x1, mean, invstd)
            dtype, n = g.dtype, x1.dim()
            g_sum, gx_sum = _channel_sums(g, xhat, lead)
            scale = _norm_scale(inv, weight, n)
            dk = dkb = None
            if (need_k or need_kb) and level is None:  # one row: the input gradient as usual
                dx1 = _norm_input_grad(g, xhat, scale, g_sum, gx_sum, batch_stats)
                sizes = [dx1.shape[1]] if need_kb else None
                xd, kd = x0.to(dtype), conv_weight.to(dtype)
                _, dk, dkb = _conv_backward(dx1, xd, kd, spec, [False, need_k, need_kb], sizes)
            elif need_k or need_kb:
                dk, dkb = _fused_conv_grads(
                    x0, conv_weight, g, xhat, scale, (g_sum, gx_sum), spec, batch_stats, has_kb
                )
            dw = db = None
            if need_w:
                dw = gx_sum.reshape(gx_sum.shape[: lead + 2]).flatten(lead)
            if need_b:
                db = g_sum.reshape(g_sum.shape[: lead + 2]).flatten(lead)
        grads = [dk, dkb, dw, db]
        if level is not None:
            grads = [_rebatch(v, level) for v in grads]
        params = (conv_weight, conv_weight, weight, weight)
        out = [
            None if v is None or not need else v.to(p.dtype)
            for v, need, p in zip(grads, (need_k, need_kb, need_w, need_b), params, strict=True)
        ]
        return (None, *out, None, None, None, None, None)


def _fused_conv_grads(
    x0: Tensor,
    conv_weight: Tensor,
    rows: Tensor,
    xhat: Tensor,
    scale: Tensor,
    sums: tuple[Tensor, Tensor],
    spec: dict[str, Any],
    batch_stats: bool,
    has_bias: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-task (T × weight shape, T × C_out) convolution gradients of
    :class:`ConvBatchNormOutput` from the batch norm's task rows and their channel sums
    (Σ g, Σ g x̂; see its docstring)."""
    g_sum, gx_sum = sums
    t, c = rows.shape[0], rows.shape[2]
    dtype = rows.dtype
    xd = x0.to(dtype)
    shape = conv_weight.shape
    per_channel = (t, c, *([1] * (conv_weight.dim() - 1)))
    s = scale.reshape(1, c, *([1] * (conv_weight.dim() - 1)))
    count = xhat.numel() // xhat.shape[1]
    patches = _patches(xd, shape, spec) if _unfold_pays(spec, shape, t) else None
    if patches is not None:  # W(g_i): T × weight shape
        gw, _ = _unfolded_task_grads(xd, rows, shape, spec, False, patches)
    else:
        gw, _ = conv_task_grads(xd, rows, shape, spec, False)
    dk: Tensor = gw
    if batch_stats:
        # W(x̂) once (one more "task"); W(1): every output channel's sum of its patches
        if patches is not None:
            w_xhat, _ = _unfolded_task_grads(xd, xhat.unsqueeze(0), shape, spec, False, patches)
            w_one = patches.sum(dim=(0, 1)).reshape(1, *shape[1:])
        else:
            w_xhat, _ = conv_task_grads(xd, xhat.unsqueeze(0), shape, spec, False)
            ones = torch.ones_like(xhat).unsqueeze(0)
            w_one = conv_task_grads(xd, ones, shape, spec, False)[0][0]
        a = (g_sum / count).reshape(per_channel)
        e = (gx_sum / count).reshape(per_channel)
        dk = gw - a * w_one - e * w_xhat[0]
    dk = dk * s
    dkb = None
    if has_bias:
        if batch_stats:
            xhat_sum = xhat.sum(dim=[0, *range(2, xhat.dim())])  # ≈ 0, kept exact
            dkb = -scale.reshape(1, c) * (gx_sum / count).reshape(t, c) * xhat_sum
        else:
            dkb = scale.reshape(1, c) * g_sum.reshape(t, c)
    return dk, dkb


def conv_batch_norm_output(
    conv: Any, x0: Tensor, norm: Any, x1: Tensor, out: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A batch norm's ``out`` as :class:`ConvBatchNormOutput` of the convolution ``conv``'s
    input ``x0`` (its output ``x1`` is the batch norm's input), and the statistics used."""
    stats = norm_stats(norm, x1, out)
    y: Tensor = ConvBatchNormOutput.apply(  # type: ignore[no-untyped-call]
        x0,
        conv.weight,
        conv.bias,
        norm.weight,
        norm.bias,
        x1.detach(),
        out.detach(),
        stats,
        _bn_uses_batch_stats(norm),
        _conv_spec(conv),
    )
    return y, stats
