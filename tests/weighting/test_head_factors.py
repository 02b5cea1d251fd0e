"""The heads' rows ∂L_i/∂r in factored form (linear maps reading r): the Gram matrix, the
combination and the head gradients equal those of the explicit rows; the representation step
of a Gramian method is the same with and without them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import mtlkit.weighting.gradient as gradient_module
from mtlkit.weighting import MGDA, UPGrad, get
from mtlkit.weighting._engine import head_factors, head_gradients

N, D = 9, 5


class _Heads(nn.Module):
    """Heads of several shapes on one 2-D representation: with and without bias, a head that
    reads r twice (two linear maps summed), wide and one-output maps."""

    def __init__(self, widths: tuple[int, ...], double: bool = True) -> None:
        super().__init__()
        self.first = nn.ModuleList(nn.Linear(D, w, bias=i % 2 == 0) for i, w in enumerate(widths))
        self.second = nn.Linear(D, 2) if double else None
        self.out = nn.ModuleList(nn.Linear(w, 3) for w in widths)

    def losses(self, r: Tensor) -> list[Tensor]:
        result = []
        for i, (first, out) in enumerate(zip(self.first, self.out, strict=True)):
            h = torch.tanh(first(r))
            loss = out(h).pow(2).mean() * (i + 1)
            if i == 0 and self.second is not None:
                loss = loss + self.second(r).sin().sum()
            result.append(loss)
        return result


def _setup(widths: tuple[int, ...], double: bool = True) -> tuple[_Heads, Tensor, list[Tensor]]:
    torch.manual_seed(0)
    heads = _Heads(widths, double).double()
    x = torch.randn(N, 4, dtype=torch.float64)
    r = torch.tanh(x @ torch.randn(4, D, dtype=torch.float64, requires_grad=True))
    return heads, r, heads.losses(r)


# O = Σ o_k maps' outputs (+2 for the second map): narrow, O²(N + D) = 350 < T²ND = 405, takes
# the factored Gram; wide, O = 107, forms the rows first
# uniform: one map per task, all of width 1 (sums over a task's columns are reshapes)
@pytest.mark.parametrize(
    ("widths", "double"),
    [((1, 1, 1), True), ((30, 40, 35), True), ((1, 1, 1), False)],
    ids=["narrow", "wide", "uniform"],
)
def test_gram_combination_and_head_gradients_match_the_explicit_rows(
    widths: tuple[int, ...], double: bool
) -> None:
    heads, r, losses = _setup(widths, double)
    params = list(heads.parameters())
    rows = head_gradients(losses, r).reshape(len(losses), -1)
    expected_grads = torch.autograd.grad(sum(losses), params, retain_graph=True)
    found = head_factors(losses, r, params, scale=4.0)
    assert found is not None
    factors, grads = found
    torch.testing.assert_close(factors.gram(), rows @ rows.T)
    torch.testing.assert_close(factors.rows(), rows)
    w = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(factors.combine(w), (w @ rows).view(N, D))
    per_sample = rows.view(len(losses), N, D)
    coefficients = torch.randn(len(losses), D, dtype=torch.float64)
    expected = (per_sample * coefficients.unsqueeze(1)).sum(dim=0)
    torch.testing.assert_close(factors.combine_features(coefficients), expected)
    weight = torch.randn(N, D, dtype=torch.float64)
    torch.testing.assert_close(factors.feature_sums(weight), (per_sample * weight).sum(dim=1))
    torch.testing.assert_close(factors.inner(weight), rows @ weight.reshape(-1))
    for g, e in zip(grads, expected_grads, strict=True):
        assert g is not None
        torch.testing.assert_close(g, 4.0 * e)


def test_other_readers_fall_back_to_the_rows() -> None:
    heads, r, losses = _setup((2, 3, 4), double=False)
    params = list(heads.parameters())
    assert head_factors(losses, r, params) is not None
    nonlinear = [losses[0] + r.exp().sum(), *losses[1:]]  # r read by exp: not a linear map
    assert head_factors(nonlinear, r, params) is None
    shared = r @ torch.ones(D, 1, dtype=r.dtype)  # one node read by two tasks
    assert head_factors([shared.sum(), shared.pow(2).sum()], r, params) is None
    assert head_factors(losses, r, []) is None  # no inputs for the pass
    frozen = [p for p in params if all(p is not q for q in heads.first[1].parameters())]
    assert head_factors(losses, r, frozen) is None  # the pass never reaches task 1's first map
    r3 = r.unsqueeze(0)
    assert head_factors([nn.functional.linear(r3, heads.first[0].weight).sum()], r3, params) is None


def _model_step(name: str, factored: bool, monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    from tests.weighting._models import mlp_model

    if not factored:
        monkeypatch.setattr(gradient_module, "head_factors", lambda *a, **k: None)
    model, x = mlp_model(4)
    method = get(name, jacobian="representation")
    outs, rep = model.forward_with_representation(x)
    losses = {t: (i + 1) * o.pow(2).mean() for i, (t, o) in enumerate(outs.items())}
    method.backward(losses, model, representation=rep, loss_scale=2.0)
    monkeypatch.undo()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", ["upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl"])
def test_a_representation_step_is_the_same_with_or_without_factors(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_factors = _model_step(name, True, monkeypatch)
    with_rows = _model_step(name, False, monkeypatch)
    assert len(with_factors) == len(with_rows)
    for a, b in zip(with_factors, with_rows, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _spy_head_factors(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each call of ``head_factors`` found factors (the factored path was taken)."""
    calls: list[bool] = []
    original = gradient_module.head_factors

    def spy(*args: object, **kwargs: object) -> object:
        found = original(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(found is not None)
        return found

    monkeypatch.setattr(gradient_module, "head_factors", spy)
    return calls


def test_the_factored_path_is_taken_for_linear_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_head_factors(monkeypatch)
    for method in (UPGrad(jacobian="representation"), MGDA(jacobian="representation")):
        from tests.weighting._models import mlp_model

        model, x = mlp_model(3)
        outs, rep = model.forward_with_representation(x)
        method.backward({t: o.pow(2).mean() for t, o in outs.items()}, model, representation=rep)
    assert calls == [True, True]


def _aggregator_steps(
    name: str, tasks: int, factored: bool, monkeypatch: pytest.MonkeyPatch, zero_task: bool
) -> list[tuple[dict[str, float], list[Tensor]]]:
    """Three representation steps of a Jacobian aggregator (GradDrop: leak 0.3 on every
    task; loss scale 2): the records' weights and the gradients; with ``zero_task`` the last
    task's loss does not depend on the model (a zero row)."""
    from tests.weighting._models import mlp_model

    if not factored:
        monkeypatch.setattr(gradient_module, "head_factors", lambda *a, **k: None)
    model, x = mlp_model(tasks)
    options = {"leak": 0.3, "seed": 4} if name == "graddrop" else {}
    method = get(name, jacobian="representation", **options)
    out = []
    for step in range(3):
        model.zero_grad()
        outs, rep = model.forward_with_representation(x + step)
        losses = {t: (i + 1) * o.pow(2).mean() for i, (t, o) in enumerate(outs.items())}
        if zero_task:
            last = list(losses)[-1]
            losses[last] = 0.0 * losses[last]
        record = method.backward(losses, model, representation=rep, loss_scale=2.0)
        out.append((record.weights, [p.grad.clone() for p in model.parameters()]))
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("name", ["graddrop", "moco"])
@pytest.mark.parametrize(("tasks", "zero_task"), [(1, False), (4, False), (4, True)])
def test_aggregator_representation_step_is_the_same_with_or_without_factors(
    name: str, tasks: int, zero_task: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GradDrop's and MoCo's factored paths give the same update and record (effective
    weights) as the explicit rows, step after step (GradDrop: the same masks drawn; MoCo: the
    same tracked state)."""
    with_factors = _aggregator_steps(name, tasks, True, monkeypatch, zero_task)
    with_rows = _aggregator_steps(name, tasks, False, monkeypatch, zero_task)
    for (weights_f, grads_f), (weights_r, grads_r) in zip(with_factors, with_rows, strict=True):
        assert weights_f == pytest.approx(weights_r, rel=1e-9, abs=1e-12)
        for a, b in zip(grads_f, grads_r, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_graddrop_takes_the_factored_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.weighting._models import mlp_model

    calls = _spy_head_factors(monkeypatch)
    model, x = mlp_model(3)
    outs, rep = model.forward_with_representation(x)
    method = get("graddrop", jacobian="representation")
    method.backward({t: o.pow(2).mean() for t, o in outs.items()}, model, representation=rep)
    assert calls == [True]


@pytest.mark.parametrize("widths", [(3, 3, 3), (2, 4, 3)], ids=["equal", "unequal"])
def test_rows_with_one_map_per_task_match_the_explicit_rows(widths: tuple[int, ...]) -> None:
    """One linear map per task: equal widths take the batched product, unequal ones the loop;
    both are the explicit rows."""
    heads, r, losses = _setup(widths, double=False)
    found = head_factors(losses, r, list(heads.parameters()))
    assert found is not None
    rows = head_gradients(losses, r).reshape(len(losses), -1)
    torch.testing.assert_close(found[0].rows(), rows)


@pytest.mark.parametrize(
    ("widths", "double"), [((3, 3, 3), False), ((2, 4, 3), True)], ids=["uniform", "general"]
)
def test_blend_into_is_the_convex_combination_with_the_rows(
    widths: tuple[int, ...], double: bool
) -> None:
    """target ← (1 − w)·target + w·rows in place, by the batched product or through the rows;
    a target of another dtype or shape is refused."""
    heads, r, losses = _setup(widths, double)
    found = head_factors(losses, r, list(heads.parameters()))
    assert found is not None
    factors = found[0]
    rows = head_gradients(losses, r).reshape(len(losses), -1)
    target = torch.randn(rows.shape, dtype=torch.float64)
    expected = 0.7 * target + 0.3 * rows
    assert factors.blends_into(target)
    factors.blend_into(target, 0.3)
    torch.testing.assert_close(target, expected)
    assert not factors.blends_into(target.float())
    assert not factors.blends_into(target[:, :-1])
