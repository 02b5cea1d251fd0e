"""The gradient engine: per-task gradients, layer-wise Gramians, Jacobian modes, records."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting._engine import (
    compute_gramian,
    head_gradients,
    last_shared_parameters,
    layer_gramian,
    release_hooks,
    task_jacobian,
)
from mtlkit.weighting._engine import gram as gram_mod
from tests.weighting._models import (
    MODELS,
    NormalisedSum,
    RowClip,
    TinyHPS,
    as_dict,
    cnn_model,
    head_grads,
    mlp_model,
    shared_grad,
    task_losses,
    vec,
)


@pytest.fixture(autouse=True)
def _double() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- Gramian


@pytest.mark.usefixtures("layerwise")
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("through_rep", [False, True])
def test_layerwise_gramian_equals_explicit(
    kind: str, through_rep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = MODELS[kind]()
    calls = []
    monkeypatch.setattr(gram_mod, "_per_task_cheaper", lambda *_: False)  # the kernel form
    original = gram_mod.layer_gramian
    monkeypatch.setattr(
        gram_mod, "layer_gramian", lambda a, d, **kw: calls.append(1) or original(a, d, **kw)
    )
    shared = model.shared_parameters()
    for step in range(2):  # step 0 installs the hooks, step 1 uses them
        losses, rep = task_losses(model, x)
        gram = compute_gramian(losses, model, shared, representation=rep if through_rep else None)
        jac = task_jacobian(losses, shared)
        torch.testing.assert_close(gram, jac @ jac.T, rtol=0, atol=1e-10)
        assert step == 1 or not calls
    assert calls, "the layer-wise path was not used"
    release_hooks(model)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 40, 6), (3, 200, 4, 6)])
def test_layer_gramian_both_forms(shape: tuple[int, int, int, int], bias: bool) -> None:
    """Kernel form (N < d) and per-task form (N ≫ d) both equal the explicit Gram; ``bias``
    is the same as an explicit trailing column of ones."""
    t, n, d, o = shape
    a = torch.randn(n, d, dtype=torch.float64)
    delta = torch.randn(t, n, o, dtype=torch.float64)
    full = torch.cat([a, torch.ones(n, 1, dtype=torch.float64)], dim=1) if bias else a
    grads = torch.einsum("tno,nd->tod", delta, full).reshape(t, -1)
    torch.testing.assert_close(layer_gramian(a, delta, bias=bias), grads @ grads.T)


def test_gramian_layer_used_twice_and_inplace_fallback() -> None:
    """A Linear applied twice (weights tied) and one followed by an in-place ReLU stay exact."""
    torch.manual_seed(1)
    lin, lin2 = nn.Linear(4, 4).double(), nn.Linear(4, 5).double()

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.lin2 = lin, lin2

        def shared_parameters(self) -> list[nn.Parameter]:
            return list(self.parameters())

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu_(self.lin(x))  # in place on the recorded output
            return self.lin2(torch.tanh(self.lin(h)))

    model, x = Tied(), torch.randn(6, 4, dtype=torch.float64)
    for _ in range(2):
        y = model(x)
        losses = torch.stack([y[:, k].pow(2).sum() for k in range(3)])
        gram = compute_gramian(losses, model, model.shared_parameters())
        jac = task_jacobian(losses, model.shared_parameters())
        torch.testing.assert_close(gram, jac @ jac.T, rtol=0, atol=1e-10)


def test_gramian_ignores_forward_passes_that_the_losses_do_not_use() -> None:
    model, x = mlp_model()
    shared = model.shared_parameters()
    task_losses(model, x)  # installs nothing yet
    losses, _ = task_losses(model, x)
    compute_gramian(losses, model, shared)  # installs hooks
    task_losses(model, x + 1.0)  # a forward pass whose losses are dropped
    losses, _ = task_losses(model, x)
    jac = task_jacobian(losses, shared)
    torch.testing.assert_close(compute_gramian(losses, model, shared), jac @ jac.T)


def test_jacobian_through_representation_equals_direct() -> None:
    model, x = cnn_model()
    losses, rep = task_losses(model, x)
    direct = task_jacobian(losses, model.shared_parameters())
    via = task_jacobian(losses, model.shared_parameters(), representation=rep)
    torch.testing.assert_close(via, direct)
    rows = head_gradients(losses, rep)
    assert rows.shape == (3, *rep.shape)
    torch.testing.assert_close(task_jacobian(losses, [rep]), rows.reshape(3, -1))


def test_task_jacobian_chunked_equals_whole() -> None:
    model, x = mlp_model(tasks=5)
    losses, _ = task_losses(model, x)
    whole = task_jacobian(losses, model.shared_parameters())
    torch.testing.assert_close(
        task_jacobian(losses, model.shared_parameters(), chunk_size=2), whole
    )


# ---------------------------------------------------------------------------- backward


def reference(model: TinyHPS, x: object, method: object) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Explicit J, method.aggregate(J), and Σ_i ∇L_i on the heads."""
    model.zero_grad()
    losses, _ = task_losses(model, x)
    jac = task_jacobian(losses, model.shared_parameters())
    update = method.aggregate(jac)  # type: ignore[attr-defined]
    losses.sum().backward()
    return jac, update, head_grads(model)


@pytest.mark.parametrize("method_cls", [NormalisedSum, RowClip])
@pytest.mark.parametrize("through_rep", [False, True])
def test_backward_equals_aggregate_of_explicit_jacobian(
    method_cls: type, through_rep: bool
) -> None:
    model, x = cnn_model()
    method = method_cls()
    for _ in range(3):  # the first step is explicit, later ones use the recorded layers
        jac, update, heads = reference(model, x, method)
        model.zero_grad()
        losses, rep = task_losses(model, x)
        record = method.backward(
            as_dict(model, losses), model, representation=rep if through_rep else None
        )
        torch.testing.assert_close(shared_grad(model), update, rtol=1e-9, atol=1e-12)
        for got, want in zip(head_grads(model), heads, strict=True):
            torch.testing.assert_close(got, want)
        gram = jac @ jac.T
        norms = gram.diagonal().sqrt()
        assert record.norms is not None and record.cosines is not None
        torch.testing.assert_close(vec(record.norms), norms)
        torch.testing.assert_close(
            torch.tensor(record.cosines, dtype=torch.float64), gram / torch.outer(norms, norms)
        )
        # recorded weights reproduce the update: Jᵀw = u
        w = vec(record.weights)
        torch.testing.assert_close(w @ jac, update, rtol=1e-8, atol=1e-10)
    release_hooks(model)


def test_loss_scale_multiplies_all_gradients() -> None:
    model, x = mlp_model()
    method = NormalisedSum()
    grads = []
    for scale in (1.0, 8.0):
        model.zero_grad()
        losses, _ = task_losses(model, x)
        method.backward(as_dict(model, losses), model, loss_scale=scale)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(grads[1], 8.0 * grads[0])


def test_representation_mode_uses_the_representation_jacobian() -> None:
    model, x = mlp_model()
    method = NormalisedSum(jacobian="representation")
    assert method.needs_representation
    losses, rep = task_losses(model, x)
    rows = task_jacobian(losses, [rep])
    alpha = 1.0 / rows.norm(dim=1)
    (want,) = torch.autograd.grad(
        rep, model.encoder[0].weight, (alpha @ rows).view_as(rep), retain_graph=True
    )
    model.zero_grad()
    record = method.backward(as_dict(model, losses), model, representation=rep)
    torch.testing.assert_close(model.encoder[0].weight.grad, want)
    torch.testing.assert_close(vec(record.weights), alpha)


@pytest.mark.parametrize("method_cls", [NormalisedSum, RowClip])
def test_last_shared_mode(method_cls: type) -> None:
    model, x = mlp_model()
    method = method_cls(jacobian="last_shared")
    last = last_shared_parameters(model, model.shared_parameters())
    assert [p is q for p, q in zip(last, model.encoder[2].parameters(), strict=True)] == [
        True,
        True,
    ]
    losses, _ = task_losses(model, x)
    j_last = task_jacobian(losses, last)
    j_all = task_jacobian(losses, model.shared_parameters())
    update = method.aggregate(j_last)
    # weights: the method's own (Gramian) or least-squares effective ones (aggregator)
    w = torch.linalg.lstsq(j_last.T, update.unsqueeze(1)).solution[:, 0]
    model.zero_grad()
    record = method.backward(as_dict(model, losses), model)
    torch.testing.assert_close(vec(record.weights), w)
    torch.testing.assert_close(shared_grad(model), w @ j_all)


def test_last_shared_parameters_prefers_the_model_hook() -> None:
    model, _ = mlp_model()
    model.last_shared_parameters = lambda: [model.encoder[0].bias]  # type: ignore[method-assign]
    assert last_shared_parameters(model, model.shared_parameters()) == [model.encoder[0].bias]


@pytest.mark.parametrize("method_cls", [NormalisedSum, RowClip])
def test_update_every_reuses_weights(method_cls: type) -> None:
    model, x = mlp_model()
    method = method_cls(update_every=3)
    assert method.stateful
    records = []
    for step in range(4):
        model.zero_grad()
        losses, _ = task_losses(model, x + 0.1 * step)
        jac = task_jacobian(losses, model.shared_parameters())
        records.append(method.backward(as_dict(model, losses), model))
        w = vec(records[-1].weights)
        torch.testing.assert_close(shared_grad(model), w @ jac, rtol=1e-8, atol=1e-10)
    assert [r.norms is None for r in records] == [False, True, True, False]
    assert records[1].weights == records[0].weights == records[2].weights
    assert records[3].weights != records[0].weights
    assert records[1].extra == {"reused_weights": 1.0}


def test_update_every_state_round_trip() -> None:
    model, x = mlp_model()
    a, b = NormalisedSum(update_every=2), NormalisedSum(update_every=2)
    losses, _ = task_losses(model, x)
    a.backward(as_dict(model, losses), model)
    b.load_state_dict(a.state_dict())
    outs = []
    for m in (a, b):
        model.zero_grad()
        losses, _ = task_losses(model, x + 1.0)
        rec = m.backward(as_dict(model, losses), model)
        outs.append((rec.weights, shared_grad(model).clone()))
    assert outs[0][0] == outs[1][0]
    torch.testing.assert_close(outs[0][1], outs[1][1])
    a.reset()
    assert a.state_dict()["cached_weights"] is None


# ---------------------------------------------------------------------------- errors


def test_bad_options_are_named() -> None:
    with pytest.raises(ConfigError, match="NormalisedSum: option 'jacobian' must be one of"):
        NormalisedSum(jacobian="all")
    with pytest.raises(ConfigError, match="option 'update_every' must be an integer ≥ 1, got 0"):
        NormalisedSum(update_every=0)
    with pytest.raises(ConfigError, match="update_every"):
        NormalisedSum(update_every=1.5)  # type: ignore[arg-type]


def test_model_errors() -> None:
    model, x = mlp_model()
    losses, _ = task_losses(model, x)
    with pytest.raises(ConfigError, match="has no shared_parameters"):
        NormalisedSum().backward(as_dict(model, losses), nn.Linear(2, 2))
    model.encoder.requires_grad_(False)
    with pytest.raises(ConfigError, match="declares no shared parameters"):
        NormalisedSum().backward(as_dict(model, losses), model)
    model.encoder.requires_grad_(True)
    with pytest.raises(ConfigError, match="needs the shared representation"):
        NormalisedSum(jacobian="representation").backward(as_dict(model, losses), model)


def test_loss_errors() -> None:
    model, x = mlp_model()
    losses, _ = task_losses(model, x)
    bad = {"t0": losses[0], "t1": losses[1].repeat(2), "t2": losses[2]}
    with pytest.raises(TaskDataError, match="task 't1': loss must be a scalar tensor"):
        RowClip().backward(bad, model)
    method = RowClip()
    method.backward(as_dict(model, losses), model)
    losses, _ = task_losses(model, x)
    with pytest.raises(TaskDataError, match="missing task"):
        method.backward({"t0": losses[0], "t1": losses[1]}, model)


def test_repr_shows_non_default_knobs() -> None:
    assert repr(NormalisedSum()) == "NormalisedSum()"
    text = repr(RowClip(jacobian="last_shared", update_every=4))
    assert text == "RowClip(jacobian='last_shared', update_every=4)"
