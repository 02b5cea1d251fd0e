"""The engine's fast paths equal the plain computations they replace.

- :meth:`Gramian.combine` (weights applied from the recorded layers) equals wᵀJ of the explicit
  Jacobian, for linear, convolutional, normalisation and embedding layers, tied layers and the
  in-place fallback;
- :func:`head_passes` gives the same rows as :func:`head_gradients` and the head parameters'
  ∇ Σ_i L_i, also when a task parameter lies before the representation;
- :func:`row_gram` equals the plain product, blocks or not.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtlkit.weighting import UPGrad
from mtlkit.weighting._engine import (
    ROW_GRAM_BLOCK,
    gramian,
    head_gradients,
    head_passes,
    release_hooks,
    row_gram,
    task_jacobian,
)
from mtlkit.weighting._engine import backward as backward_mod
from mtlkit.weighting._engine import gram as gram_mod
from tests.weighting._models import MODELS, NormalisedSum, TinyHPS, as_dict, task_losses


def flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    """The per-parameter gradients as one vector, zeros for None."""
    pairs = zip(grads, params, strict=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in pairs])


@pytest.mark.usefixtures("layerwise")
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("through_rep", [False, True])
def test_combine_equals_weighted_jacobian_rows(kind: str, through_rep: bool) -> None:
    """Jᵀw from the recorded layers equals w @ J for arbitrary (signed) weights."""
    model, x = MODELS[kind]()
    shared = model.shared_parameters()
    weights = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    for step in range(2):  # step 0: explicit J (hooks installed); step 1: the recorded layers
        losses, rep = task_losses(model, x)
        result = gramian(losses, model, shared, representation=rep if through_rep else None)
        assert (result.jacobian is not None) == (step == 0)
        jac = task_jacobian(losses, shared)
        got = flat(result.combine(weights), shared)
        torch.testing.assert_close(got, weights @ jac, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=0, atol=1e-10)
    release_hooks(model)


def test_combine_with_a_tied_layer_and_the_inplace_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Linear used twice sums its calls; one whose output is modified in place falls back."""
    monkeypatch.setattr(gram_mod, "_per_task_cheaper", lambda *_: False)  # keep A and Δ
    torch.manual_seed(2)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.inplace, self.out = (
                nn.Linear(4, 4).double(),
                nn.Linear(4, 4).double(),
                nn.Linear(4, 3).double(),
            )

        def shared_parameters(self) -> list[nn.Parameter]:
            return list(self.parameters())

        def forward(self, x: Tensor) -> Tensor:
            h = torch.tanh(self.lin(torch.tanh(self.lin(x))))
            h = torch.relu_(self.inplace(h))  # in place on the recorded output
            return self.out(h)

    model, x = Tied(), torch.randn(6, 4, dtype=torch.float64)
    shared = model.shared_parameters()
    weights = torch.tensor([1.0, 0.25, -2.0], dtype=torch.float64)
    for _ in range(2):
        y = model(x)
        losses = torch.stack([y[:, k].pow(2).sum() for k in range(3)])
        result = gramian(losses, model, shared)
        jac = task_jacobian(losses, shared)
        torch.testing.assert_close(flat(result.combine(weights), shared), weights @ jac)
    assert result.jacobian is None and len(result.layers) == 2  # lin (two calls) and out
    assert {id(p) for p in model.inplace.parameters()} <= set(result.rest)
    release_hooks(model)


def test_combine_leaves_unreached_parameters_none() -> None:
    """A shared layer that no loss reaches gets no gradient (as a backward pass gives none)."""
    torch.manual_seed(3)

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()

        def shared_parameters(self) -> list[nn.Parameter]:
            return list(self.parameters())

    model, x = TwoBranches(), torch.randn(5, 3, dtype=torch.float64)
    for _ in range(2):
        y = model.used(x)
        model.unused(x)  # recorded, but the losses below do not depend on it
        losses = torch.stack([y[:, 0].sum(), y[:, 1].pow(2).sum()])
        result = gramian(losses, model, model.shared_parameters())
    grads = result.combine(torch.ones(2, dtype=torch.float64))
    assert grads[2] is None and grads[3] is None
    jac = task_jacobian(losses, list(model.used.parameters()))
    torch.testing.assert_close(flat(grads[:2], list(model.used.parameters())), jac.sum(0))
    release_hooks(model)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_head_passes_give_rows_and_the_head_gradient(kind: str, scale: float) -> None:
    """One pass gives each task's row and scale · ∇ Σ_i L_i on the heads."""
    model, x = MODELS[kind]()
    outs, rep = model.forward_with_representation(x)
    losses = [(k + 1) * o.pow(2).mean() for k, o in enumerate(outs.values())]
    heads = list(model.heads.parameters())
    assert backward_mod._readers_by_task(losses, rep) is not None  # the one-pass path
    rows, grads = head_passes(losses, rep, heads, scale=scale)
    for i, loss in enumerate(losses):
        (want,) = torch.autograd.grad(loss, rep, retain_graph=True)
        torch.testing.assert_close(rows[i], want, rtol=1e-14, atol=0)
    want_heads = torch.autograd.grad(sum(losses), heads, retain_graph=True)
    for got, w in zip(grads, want_heads, strict=True):
        assert got is not None
        torch.testing.assert_close(got, scale * w)


def test_head_passes_with_shared_head_operations_and_unused_representation() -> None:
    """A node on r shared by all heads (here r·2 and a view) cannot be split by task: the rows
    come from per-task passes, and are the same; a task that ignores r gets a zero row."""
    model, x = MODELS["mlp"]()
    rep = model.encoder(x)
    shared_op = (rep * 2.0).view(-1, rep.shape[1])
    losses = [
        model.heads[0](shared_op).pow(2).mean(),
        model.heads[1](shared_op).pow(2).sum(),
        model.heads[2](x[:, :5]).pow(2).mean(),  # does not read r
    ]
    heads = list(model.heads.parameters())
    assert backward_mod._readers_by_task(losses, rep) is None  # the per-task fallback
    rows, grads = head_passes(losses, rep, heads)
    torch.testing.assert_close(rows, head_gradients(losses, rep))
    assert rows[2].abs().max() == 0
    want = torch.autograd.grad(sum(losses), heads, retain_graph=True, allow_unused=True)
    for got, w in zip(grads, want, strict=True):
        assert (got is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(got, w)


def test_head_passes_remove_their_hooks() -> None:
    """The hooks live for one pass only: a later backward through the heads is unaffected."""
    model, x = MODELS["mlp"]()
    outs, rep = model.forward_with_representation(x)
    losses = [o.pow(2).mean() for o in outs.values()]
    first, _ = head_passes(losses, rep)
    second, _ = head_passes(losses, rep)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


class TaskGate(nn.Module):
    """A task-specific scale *before* the representation: the head passes must not own it."""

    def __init__(self, model: TinyHPS) -> None:
        super().__init__()
        self.model = model
        self.gate = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))  # not shared

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.model.shared_parameters()

    def forward_with_representation(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        rep = self.model.encoder(x) * self.gate
        heads = self.model.heads
        return {n: h(rep) for n, h in zip(self.model.task_names, heads, strict=True)}, rep


@pytest.mark.parametrize("mode", ["shared", "representation"])
@pytest.mark.parametrize("gated", [False, True])
def test_task_parameters_get_the_sum_of_task_gradients(mode: str, gated: bool) -> None:
    """With a representation, every task parameter gets ∇ Σ_i L_i, whether it sits after the
    representation (head passes) or before it (the separate backward), at any loss scale."""
    base, x = MODELS["mlp"]()
    model: nn.Module = TaskGate(base) if gated else base
    method = NormalisedSum(jacobian=mode)
    own = [p for n, p in model.named_parameters() if "encoder" not in n]
    for scale in (1.0, 4.0):
        for _ in range(2):  # the second step uses the recorded layers
            outs, rep = model.forward_with_representation(x)  # type: ignore[operator]
            losses = torch.stack([(k + 1) * o.pow(2).mean() for k, o in enumerate(outs.values())])
            want = torch.autograd.grad(losses.sum(), own, retain_graph=True)
            model.zero_grad()
            method.backward(as_dict(base, losses), model, representation=rep, loss_scale=scale)
            for p, w in zip(own, want, strict=True):
                torch.testing.assert_close(p.grad, scale * w)
    release_hooks(model)


@pytest.mark.parametrize("k", [5, 2 * ROW_GRAM_BLOCK, 3 * ROW_GRAM_BLOCK + 17])
def test_row_gram_equals_the_plain_product(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    a = torch.randn(4, k, generator=g, dtype=torch.float64)
    b = torch.randn(4, k, generator=g, dtype=torch.float64)
    torch.testing.assert_close(row_gram(a, b), a @ b.T)
    torch.testing.assert_close(row_gram(a), a @ a.T)
    torch.testing.assert_close(row_gram(a[:, ::2]), a[:, ::2] @ a[:, ::2].T)  # strided rows


def test_upgrad_shared_step_is_non_conflicting_on_the_recorded_path() -> None:
    """End to end on the fast path: the update written to the shared parameters has a
    non-negative inner product with every task gradient (UPGrad's guarantee)."""
    model, x = MODELS["cnn_bn"]()
    method = UPGrad()
    shared = model.shared_parameters()
    for _ in range(2):
        model.zero_grad()
        losses, rep = task_losses(model, x)
        jac = task_jacobian(losses, shared)
        method.backward(as_dict(model, losses), model, representation=rep)
    update = torch.cat([p.grad.reshape(-1) for p in shared])
    scale = (jac @ jac.T).diagonal().max()
    assert (jac @ update).min() >= -1e-10 * scale
    release_hooks(model)


@pytest.mark.parametrize("mode", ["shared", "representation"])
def test_reused_rows_buffer_gives_each_step_its_own_update(mode: str) -> None:
    """The rows buffer is written over every step: each step's update is still that step's
    own Jᵀα, and a record's weights match its step."""
    model, x = MODELS["mlp"]()
    method = NormalisedSum(jacobian=mode)
    shared = model.shared_parameters()
    buffers = []
    for step in range(3):
        model.zero_grad()
        outs, rep = model.forward_with_representation(x + 0.5 * step)
        per_task = {n: (k + 1) * o.pow(2).mean() for k, (n, o) in enumerate(outs.items())}
        losses = torch.stack(list(per_task.values()))
        jac = task_jacobian(losses, shared)
        rows = task_jacobian(losses, [rep])
        alpha = 1.0 / (rows if mode == "representation" else jac).norm(dim=1)
        record = method.backward(per_task, model, representation=rep)
        torch.testing.assert_close(torch.tensor(list(record.weights.values())), alpha.float())
        update = torch.cat([p.grad.reshape(-1) for p in shared])
        torch.testing.assert_close(update, alpha @ jac, rtol=1e-9, atol=1e-12)
        buffers.append(method._rows_buffer)
    assert buffers[0] is buffers[1] is buffers[2]
    release_hooks(model)
