"""Layer-wise Gramians per layer type: G = J Jᵀ and the update Jᵀw against the explicit
Jacobian, taken one task at a time by plain autograd before the engine's hooks exist."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mtlkit.weighting._engine import gram as gram_mod
from mtlkit.weighting._engine import gramian, release_hooks
from mtlkit.weighting._engine import layers as layers_mod
from tests.weighting._models import TinyHPS

TASKS = 4
#: the layer-wise rules themselves, convolutions included (conftest.py)
pytestmark = pytest.mark.usefixtures("layerwise")


class Pooled(nn.Module):
    """``body`` then a mean over every axis but the batch and the last (feature) one."""

    def __init__(self, body: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.body = body
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if not self.channels_last:
            h = h.flatten(2).transpose(1, 2) if h.dim() > 2 else h.unsqueeze(1)
        return torch.tanh(h.reshape(h.shape[0], -1, h.shape[-1]).mean(dim=1))


class Attention(nn.Module):
    """Token embeddings, self-attention (MultiheadAttention), LayerNorm, mean pooling."""

    def __init__(self, batch_first: bool, memory: str = "self") -> None:
        super().__init__()
        self.batch_first, self.memory = batch_first, memory
        self.embedding = nn.Embedding(13, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embedding(tokens)  # B × L × 8
        if not self.batch_first:
            h = h.transpose(0, 1)
        if self.memory == "self":  # one packed projection
            a, _ = self.attn(h, h, h, need_weights=False)
        elif self.memory == "key-value":  # query rows, then key and value rows together
            kv = torch.tanh(h)
            a, _ = self.attn(h, kv, kv)
        else:  # three row blocks of the packed weight
            a, _ = self.attn(h, torch.tanh(h), h * 0.5)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return torch.tanh(self.out(self.norm(a + self.embedding(tokens)).mean(dim=1)))


class TwiceEmbedded(nn.Module):
    """One embedding looked up twice (tied), with repeated indices and a padding row."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.embedding = nn.Embedding(9, 5, padding_idx=0, **kwargs)  # type: ignore[arg-type]

    def forward(self, tokens: Tensor) -> Tensor:
        first = self.embedding(tokens).mean(dim=1)
        second = self.embedding(tokens.flip(1)[:, :2]).sum(dim=1)
        return torch.tanh(first * 1.3 + second)


class Transformer(nn.Module):
    """Token embeddings and a TransformerEncoderLayer (MHA, feed-forward, LayerNorms)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(13, 8, padding_idx=0)
        self.layer = nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=12, dropout=0.0, batch_first=True
        )
        self.attn = self.layer.self_attn
        self.out = nn.Linear(8, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.tanh(self.out(self.layer(self.embedding(tokens)).mean(dim=1)))


def _conv2d(**kw: object) -> Callable[[], tuple[nn.Module, Tensor]]:
    def build() -> tuple[nn.Module, Tensor]:
        body = nn.Sequential(
            nn.Conv2d(4, 6, 3, **kw),  # type: ignore[arg-type]
            nn.ReLU(),
            nn.Conv2d(6, 5, 1),
        )
        return Pooled(body), torch.randn(3, 4, 9, 8)

    return build


CASES: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "conv2d": _conv2d(padding=1),
    "conv2d-stride-dilation-padding": _conv2d(stride=(2, 1), padding=(2, 1), dilation=2),
    "conv2d-grouped": _conv2d(groups=2, padding=1, bias=False),
    "conv2d-depthwise": lambda: (
        Pooled(nn.Sequential(nn.Conv2d(4, 8, 3, groups=4, stride=2), nn.Conv2d(8, 5, 1))),
        torch.randn(3, 4, 9, 9),
    ),
    "conv2d-inplace-relu": lambda: (
        Pooled(nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True), nn.Conv2d(6, 5, 1))),
        torch.randn(3, 4, 7, 7),
    ),
    "conv2d-unbatched-input": lambda: (
        nn.Sequential(nn.Conv2d(4, 5, 3, stride=2), nn.Tanh(), nn.Flatten(0), nn.Linear(45, 5)),
        torch.randn(4, 7, 7),
    ),
    "conv1d": lambda: (
        Pooled(
            nn.Sequential(
                nn.Conv1d(3, 6, 3, stride=2, padding=2, dilation=2),
                nn.Tanh(),
                nn.Conv1d(6, 5, 2, groups=1),
            )
        ),
        torch.randn(3, 3, 11),
    ),
    "conv1d-depthwise": lambda: (
        Pooled(nn.Sequential(nn.Conv1d(3, 6, 3, groups=3), nn.Tanh(), nn.Conv1d(6, 5, 1))),
        torch.randn(3, 3, 10),
    ),
    "batchnorm2d-train": lambda: (
        Pooled(
            nn.Sequential(
                nn.Conv2d(3, 5, 3),
                nn.BatchNorm2d(5),
                nn.ReLU(),
                nn.Conv2d(5, 5, 3, stride=2),
                nn.BatchNorm2d(5),
            )
        ),
        torch.randn(4, 3, 9, 9),
    ),
    "conv-batchnorm-fused-grouped": lambda: (
        Pooled(
            nn.Sequential(
                nn.Conv2d(4, 6, 3, groups=2, stride=2, bias=False),
                nn.BatchNorm2d(6),
                nn.ReLU(),
                nn.Conv2d(6, 5, 1),
            )
        ),
        torch.randn(4, 4, 9, 9),
    ),
    "batchnorm1d-train": lambda: (
        nn.Sequential(nn.Linear(6, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 5)),
        torch.randn(8, 6),
    ),
    "batchnorm1d-sequence": lambda: (
        Pooled(nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.Tanh())),
        torch.randn(4, 3, 9),
    ),
    "layernorm": lambda: (
        nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 5)),
        torch.randn(7, 6),
    ),
    "layernorm-two-axes": lambda: (
        Pooled(nn.Sequential(nn.Linear(5, 5), nn.LayerNorm([2, 5]), nn.Tanh()), channels_last=True),
        torch.randn(3, 7, 2, 5),
    ),
    "groupnorm": lambda: (
        Pooled(
            nn.Sequential(nn.Conv2d(2, 6, 3), nn.GroupNorm(3, 6), nn.Tanh(), nn.Conv2d(6, 5, 1))
        ),
        torch.randn(3, 2, 6, 6),
    ),
    "embedding-repeated-padding": lambda: (
        TwiceEmbedded(),
        torch.tensor([[1, 3, 3, 0], [0, 3, 5, 1], [8, 8, 8, 2]]),
    ),
    "embedding-scale-by-freq": lambda: (
        TwiceEmbedded(scale_grad_by_freq=True),
        torch.tensor([[1, 3, 3, 0], [0, 3, 5, 1], [8, 8, 8, 2]]),
    ),
    "attention-batch-first": lambda: (Attention(True), torch.randint(0, 13, (3, 5))),
    "attention-sequence-first": lambda: (Attention(False), torch.randint(0, 13, (3, 5))),
    "transformer-encoder-layer": lambda: (Transformer(), torch.randint(0, 13, (3, 5))),
    "attention-cross-key-value": lambda: (
        Attention(True, "key-value"),
        torch.randint(0, 13, (3, 5)),
    ),
    "attention-separate-qkv": lambda: (
        Attention(False, "separate"),
        torch.randint(0, 13, (3, 5)),
    ),
}


def _model(case: str) -> tuple[TinyHPS, Tensor]:
    torch.manual_seed(0)
    encoder, x = CASES[case]()
    model = TinyHPS(encoder, 5, TASKS).double()
    model.train()
    return model, x.double() if x.is_floating_point() else x


def _losses(model: TinyHPS, x: Tensor) -> Tensor:
    outs, _ = model.forward_with_representation(x)
    return torch.stack([(k + 1) * o.pow(2).mean() + o.mean() for k, o in enumerate(outs.values())])


def _explicit_jacobian(losses: Tensor, shared: list[nn.Parameter]) -> Tensor:
    """J one task at a time by plain autograd (no batching, no engine)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, shared, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("linear", ["kernel", "per-task", "lean"])
@pytest.mark.parametrize("through_rep", [False, True], ids=["losses", "representation"])
@pytest.mark.parametrize("case", list(CASES))
def test_layer_gramian_and_update_equal_the_explicit_jacobian(
    case: str, through_rep: bool, linear: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G and Jᵀw, with the Linear layers' inputs and output gradients kept for the update
    (kernel form), their per-task weight gradients kept, or (lean, as at many tasks) their
    blocks taken in passing and the update replayed."""
    lean = linear == "lean"
    if lean:
        monkeypatch.setattr(gram_mod, "KEEP_ROWS_BYTES", 0)
    else:
        per_task = linear == "per-task"
        monkeypatch.setattr(gram_mod, "_per_task_cheaper", lambda *_: per_task)
    model, x = _model(case)
    has_linear = any(type(m) is nn.Linear for m in model.encoder.modules())
    shared = model.shared_parameters()
    losses = _losses(model, x)
    jac = _explicit_jacobian(losses, shared)  # before any hook exists
    gramian(losses, model, shared)  # installs the hooks (explicit path for this step)
    try:
        outs, rep = model.forward_with_representation(x)
        losses = torch.stack(
            [(k + 1) * o.pow(2).mean() + o.mean() for k, o in enumerate(outs.values())]
        )
        result = gramian(losses, model, shared, representation=rep if through_rep else None)
        assert result.jacobian is None, "the layer-wise path was not taken"
        assert bool(result.replayed) == (lean and has_linear and through_rep)
        if hasattr(model.encoder, "attn"):  # its projections' blocks, not per-parameter rows
            assert result.sliced and not set(map(id, model.encoder.attn.parameters())) & set(
                result.rest
            )
        scale = jac.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=1e-9, atol=1e-9 * scale**2)
        w = torch.linspace(-1.0, 2.0, TASKS, dtype=torch.float64)
        update = torch.cat(
            [
                (torch.zeros_like(p) if u is None else u).reshape(-1)
                for u, p in zip(result.combine(w), shared, strict=True)
            ]
        )
        torch.testing.assert_close(update, w @ jac, rtol=1e-9, atol=1e-9 * scale)
    finally:
        release_hooks(model)


@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "data"])
@pytest.mark.parametrize(
    "case", ["conv2d-grouped", "conv1d", "batchnorm2d-train", "conv-batchnorm-fused-grouped"]
)
def test_routed_layers_keep_the_ordinary_backward(case: str, input_grad: bool) -> None:
    """With the hooks in place, a plain backward (parameters, and the input when it needs
    one; without, a convolution on the data and its batch norm share one fused backward) is
    unchanged."""
    model, x = _model(case)
    x = x.clone().requires_grad_(input_grad)
    wrt = [x, *model.parameters()] if input_grad else list(model.parameters())
    reference = torch.autograd.grad(_losses(model, x).sum(), wrt)
    shared = model.shared_parameters()
    gramian(_losses(model, x), model, shared)  # installs the hooks
    try:
        routed = torch.autograd.grad(_losses(model, x).sum(), wrt)
        for a, b in zip(routed, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    finally:
        release_hooks(model)


def test_convolutions_and_batch_norms_fold_the_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched backward of a routed convolution runs once for all tasks, not per task."""
    calls: list[int] = []
    original = layers_mod._conv_input_grads

    def spy(deltas: Tensor, *args: object) -> Tensor:
        calls.append(deltas.shape[0])
        return original(deltas, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(layers_mod, "_conv_input_grads", spy)
    model, x = _model("batchnorm2d-train")
    shared = model.shared_parameters()
    gramian(_losses(model, x), model, shared)
    try:
        calls.clear()
        gramian(_losses(model, x), model, shared)
        assert calls == [TASKS]  # the second convolution's input gradient, all tasks at once
    finally:
        release_hooks(model)


@pytest.mark.parametrize("case", ["batchnorm2d-train", "batchnorm1d-sequence"])
def test_a_convolution_on_the_data_and_its_batch_norm_are_fused(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first convolution's per-task gradients come from the batch norm's task rows
    (no T-sized input gradient of the batch norm), and G is still JJᵀ."""
    calls: list[int] = []
    original = layers_mod._fused_conv_grads

    def spy(x0: Tensor, weight: Tensor, rows: Tensor, *args: object) -> object:
        calls.append(rows.shape[0])
        return original(x0, weight, rows, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(layers_mod, "_fused_conv_grads", spy)
    model, x = _model(case)
    shared = model.shared_parameters()
    losses = _losses(model, x)
    jac = _explicit_jacobian(losses, shared)
    gramian(losses, model, shared)
    try:
        calls.clear()
        result = gramian(_losses(model, x), model, shared)
        assert calls == [TASKS]
        scale = jac.abs().max().item()
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=1e-9, atol=1e-9 * scale**2)
    finally:
        release_hooks(model)


@pytest.mark.parametrize("case", ["batchnorm2d-train", "conv-batchnorm-fused-grouped"])
def test_batchnorm_in_eval_mode_uses_the_running_statistics(case: str) -> None:
    model, x = _model(case)
    for _ in range(2):
        with torch.no_grad():
            model(x + 1.0)  # moves the running statistics away from the batch's
    model.eval()
    shared = model.shared_parameters()
    losses = _losses(model, x)
    jac = _explicit_jacobian(losses, shared)
    gramian(losses, model, shared)
    try:
        result = gramian(_losses(model, x), model, shared)
        assert result.jacobian is None
        scale = jac.abs().max().item()
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=1e-9, atol=1e-9 * scale**2)
    finally:
        release_hooks(model)


def test_lean_path_with_task_chunks_keeps_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of tasks cannot give a block in passing (it needs every pair of tasks): the
    output gradients are kept and G is still exact."""
    monkeypatch.setattr(gram_mod, "KEEP_ROWS_BYTES", 0)
    model, x = _model("batchnorm1d-train")
    shared = model.shared_parameters()
    losses = _losses(model, x)
    jac = _explicit_jacobian(losses, shared)
    gramian(losses, model, shared)
    try:
        result = gramian(_losses(model, x), model, shared, chunk_size=3)
        assert result.jacobian is None and not result.replayed
        scale = jac.abs().max().item()
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=1e-9, atol=1e-9 * scale**2)
    finally:
        release_hooks(model)


def test_attention_restores_the_functional_linear_after_its_forward_pass() -> None:
    """The attention projections are recorded by pointing ``F.linear`` at a recorder for the
    duration of the module's forward pass only, also when that pass raises."""
    linear = torch.nn.functional.linear
    model, x = _model("attention-batch-first")
    shared = model.shared_parameters()
    gramian(_losses(model, x), model, shared)  # installs the hooks
    try:
        _losses(model, x)
        assert torch.nn.functional.linear is linear
        bad = torch.randn(2, 3, 5, dtype=torch.float64)  # embedding dimension 5, not 8
        with pytest.raises(AssertionError, match="embedding dimension"):
            model.encoder.attn(bad, bad, bad)
        assert torch.nn.functional.linear is linear
    finally:
        release_hooks(model)
    assert torch.nn.functional.linear is linear


@pytest.mark.parametrize("through_rep", [False, True], ids=["losses", "representation"])
def test_lean_steps_of_a_method_equal_the_kept_ones(
    through_rep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Gramian method's steps (heads' backward first, then the update) give the same
    gradients whether the Linear rows are kept or the update is replayed."""
    from mtlkit.weighting import UPGrad

    grads = {}
    for keep in (2**62, 0):
        monkeypatch.setattr(gram_mod, "KEEP_ROWS_BYTES", keep)
        model, x = _model("layernorm")
        method = UPGrad()
        for _ in range(3):
            model.zero_grad()
            outs, rep = model.forward_with_representation(x)
            losses = {
                k: (i + 1) * o.pow(2).mean() + o.mean() for i, (k, o) in enumerate(outs.items())
            }
            method.backward(losses, model, representation=rep if through_rep else None)
        grads[keep] = [p.grad.clone() for p in model.parameters()]
        release_hooks(model)
    for a, b in zip(grads[0], grads[2**62], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "case", ["conv2d", "conv2d-stride-dilation-padding", "conv1d", "batchnorm2d-train"]
)
@pytest.mark.parametrize("unfold_patch", [0, 10**9], ids=["folded", "unfolded"])
def test_both_convolution_task_gradient_forms(
    case: str, unfold_patch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-task convolution weight gradients from one folded convolution_backward or from
    the unfolded patches: the same G and update."""
    monkeypatch.setattr(layers_mod, "UNFOLD_PATCH", unfold_patch)
    monkeypatch.setattr(layers_mod, "UNFOLD_MIN_TASKS", 1)
    test_layer_gramian_and_update_equal_the_explicit_jacobian(case, True, "kernel", monkeypatch)
