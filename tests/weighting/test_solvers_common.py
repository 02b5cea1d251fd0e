"""Properties every solver-based gradient method shares: registry, robustness, equivariance,
scale convention, backward on a real model, and option validation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import mtlkit.weighting as weighting
from mtlkit.errors import ConfigError
from mtlkit.nn import ENCODERS, build_model
from mtlkit.tasks import Task
from mtlkit.weighting import DualProj, UPGrad
from tests.weighting._asserts import assert_non_conflicting
from tests.weighting.samplers import HARD, HARD_CASES

NAMES = ["mgda", "upgrad", "dualproj", "cagrad", "imtl_g", "nash_mtl", "fairgrad"]
#: methods whose update is positively homogeneous of degree 1 in J
LINEAR = ["mgda", "upgrad", "dualproj", "cagrad", "imtl_g"]


def build(name: str) -> weighting.GramianWeighting:
    method = weighting.get(name)
    assert isinstance(method, weighting.GramianWeighting)
    return method


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_paper_defaults(name: str) -> None:
    method = build(name)
    assert name in weighting.available()
    assert method.name == name
    assert repr(method).startswith(type(method).__name__ + "(")
    assert {"cagrad": "c=0.4", "fairgrad": "alpha=1.0"}.get(name, "") in repr(method)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["zero_row", "all_zero", "one_nonzero"])
def test_zero_gradients_give_finite_updates(name: str, case: str) -> None:
    jac = HARD_CASES["zero_row"](4, 7, seed=1)
    if case == "all_zero":
        jac = torch.zeros(4, 7, dtype=torch.float64)
    elif case == "one_nonzero":
        jac[1:] = 0.0
    method = build(name)
    update = method.aggregate(jac)
    assert bool(torch.isfinite(update).all()) and bool(torch.isfinite(method.last_weights()).all())
    if case == "all_zero":
        assert float(update.abs().max()) == 0.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["random", "dominant_norm", "zero_row", "nearly_collinear"])
def test_permutation_equivariance(name: str, case: str) -> None:
    jac = HARD_CASES[case](5, 8, seed=3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    method = build(name)
    update = method.aggregate(jac)
    weights = method.last_weights()
    torch.testing.assert_close(method.aggregate(jac[perm]), update, rtol=1e-7, atol=1e-9)
    if case != "nearly_collinear":  # weights of near-duplicate gradients are ill-determined
        torch.testing.assert_close(method.last_weights(), weights[perm], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 5])
def test_identical_gradients(name: str, t: int) -> None:
    g = HARD_CASES["random"](1, 6, seed=t)[0] * 3.0
    update = build(name).aggregate(g.repeat(t, 1))
    norm = float(g.norm())
    expected = {
        # the bargaining solutions have their own scale (see their docstrings)
        "nash_mtl": t**0.5 / norm * g,
        "fairgrad": t * (t * norm**2) ** -0.5 * g,
    }.get(name, t * g)
    torch.testing.assert_close(update, expected)


@pytest.mark.parametrize("name", NAMES)
def test_scaling_all_gradients(name: str) -> None:
    jac = HARD_CASES["random"](4, 9, seed=5)
    method = build(name)
    update = method.aggregate(jac)
    factor = {"nash_mtl": 1.0, "fairgrad": 1.0}.get(name, 8.0)  # α = 1: scale invariant
    torch.testing.assert_close(method.aggregate(8.0 * jac), factor * update)


@pytest.mark.parametrize("name", NAMES)
def test_float32_jacobian(name: str) -> None:
    jac = HARD_CASES["random"](3, 5, seed=0)
    update = build(name).aggregate(jac.float())
    assert update.dtype == torch.float32
    torch.testing.assert_close(update.double(), build(name).aggregate(jac), rtol=1e-4, atol=1e-5)


def tiny_hps(seed: int = 0) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    torch.manual_seed(seed)
    tasks = [
        Task("a", "regression"),
        Task("b", "regression", num_outputs=2),
        Task("c", "regression"),
    ]
    encoder = ENCODERS.build("mlp", in_features=4, hidden=(6, 5))
    model = build_model("hps", encoder, tasks)  # float32: the mlp encoder casts its inputs
    x = torch.randn(8, 4)
    targets = {"a": torch.randn(8), "b": torch.randn(8, 2), "c": torch.randn(8)}
    return model, {"x": x}, targets


def losses_of(model: nn.Module, x: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
    out = model(x)
    return {t: ((out[t].reshape(targets[t].shape) - targets[t]) ** 2).mean() for t in targets}


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_aggregate_of_the_explicit_jacobian(name: str) -> None:
    model, batch, targets = tiny_hps()
    shared = list(model.shared_parameters())
    losses = losses_of(model, batch["x"], targets)
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        for loss in losses.values()
    ]
    heads = {
        t: torch.autograd.grad(losses[t], list(model.task_parameters(t)), retain_graph=True)
        for t in losses
    }
    expected = build(name).aggregate(torch.stack(rows))
    method = build(name)
    record = method.backward(losses, model)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    for t, grads in heads.items():  # heads get their own task's gradient
        for p, g in zip(model.task_parameters(t), grads, strict=True):
            torch.testing.assert_close(p.grad, g)
    assert set(record.weights) == set(targets)


def test_mgda_loss_normalisation_uses_the_losses_in_backward() -> None:
    model, batch, targets = tiny_hps(seed=1)
    shared = list(model.shared_parameters())
    losses = losses_of(model, batch["x"], targets)
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        for loss in losses.values()
    ]
    stacked = torch.stack(list(losses.values())).detach()
    expected = weighting.MGDA(normalization="loss").aggregate(torch.stack(rows), losses=stacked)
    weighting.MGDA(normalization="loss").backward(losses, model)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("cagrad", {"c": -1}, "CAGrad: option 'c' must be ≥ 0, got -1"),
        ("cagrad", {"c": float("nan")}, "CAGrad: option 'c' must be ≥ 0"),
        ("cagrad", {"rescale": 3}, "CAGrad: option 'rescale' must be one of 0, 1, 2, got 3"),
        ("fairgrad", {"alpha": 0.0}, "FairGrad: option 'alpha' must be > 0, got 0.0"),
        ("mgda", {"normalization": "max"}, "MGDA: option 'normalization' must be one of"),
        ("upgrad", {"pref_vector": [1.0, -1.0]}, "UPGrad: option 'pref_vector' must be"),
        ("dualproj", {"pref_vector": []}, "DualProj: option 'pref_vector' must be"),
        ("nash_mtl", {"update_every": 0}, "NashMTL: option 'update_every'"),
        ("imtl_g", {"jacobian": "full"}, "IMTLG: option 'jacobian' must be one of"),
        ("nash_mtl", {"max_iter": 3}, "unknown option"),
    ],
)
def test_bad_options_are_named(name: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        weighting.get(name, **params)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gradients_are_a_task_data_error(name: str) -> None:
    jac = HARD_CASES["random"](3, 4, seed=0)
    jac[1, 2] = float("nan")
    with pytest.raises(weighting.base.TaskDataError, match="NaN or inf"):
        build(name).aggregate(jac)


@pytest.mark.parametrize("method", [UPGrad(), DualProj()], ids=str)
@pytest.mark.parametrize("jac", HARD)
def test_dual_cone_methods_do_not_conflict(method: UPGrad | DualProj, jac: Tensor) -> None:
    update = method.aggregate(jac)
    assert_non_conflicting(jac, update, method.last_weights())


def test_pref_vector_length_must_match_the_tasks() -> None:
    with pytest.raises(ConfigError, match="option 'pref_vector' has 2 entries but there are 3"):
        UPGrad(pref_vector=[1.0, 1.0]).aggregate(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="option 'pref_vector' has 2 entries"):
        DualProj(pref_vector=[1.0, 1.0]).bind(["a", "b", "c"])
