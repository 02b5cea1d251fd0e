"""Method-specific mathematics of MGDA, UPGrad, DualProj, CAGrad, IMTL-G, Nash-MTL, FairGrad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting import IMTLG, MGDA, CAGrad, DualProj, FairGrad, NashMTL, UPGrad

from .samplers import HARD_CASES


def hard_jacobians(sizes: tuple[tuple[int, int], ...] = ((2, 6), (4, 3), (5, 30), (10, 40))):
    for name, sampler in HARD_CASES.items():
        for t, p in sizes:
            if name == "conflicting" and p < t:
                continue
            yield pytest.param(sampler(t, p, seed=t + p), id=f"{name}-{t}x{p}")


HARD = list(hard_jacobians())


def assert_non_conflicting(jac: Tensor, update: Tensor, weights: Tensor) -> None:
    """g_iᵀx ≥ −1e-10 ‖g_i‖ × (the size of the terms summed into x, Σ_j |α_j| ‖g_j‖)."""
    norms = jac.norm(dim=1)
    scale = norms * max(float(update.norm()), float((weights.abs() * norms).sum()))
    assert bool(((jac @ update) >= -1e-10 * scale).all()), (jac @ update) / scale


# ---------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize("jac", HARD)
def test_mgda_kkt_of_the_min_norm_problem(jac: Tensor) -> None:
    t = jac.shape[0]
    method = MGDA()
    alpha = method.weights_from_gram(jac @ jac.T) / t  # back on the simplex
    gram = jac @ jac.T
    assert float(alpha.min()) >= 0 and abs(float(alpha.sum()) - 1) < 1e-12
    grad, level = gram @ alpha, alpha @ gram @ alpha
    tol = 1e-9 * float(gram.diagonal().max())
    assert bool((grad >= level - tol).all())
    support = alpha > 1e-9
    assert torch.allclose(grad[support], level.expand(int(support.sum())), atol=tol, rtol=0)


def test_mgda_update_is_the_min_norm_point() -> None:
    jac = HARD_CASES["random"](4, 3, seed=5)
    update = MGDA().aggregate(jac) / 4
    samples = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((500,))
    assert float(update.norm()) <= float((samples @ jac).norm(dim=1).min()) + 1e-12


def test_mgda_l2_weights_ignore_gradient_scales() -> None:
    jac = HARD_CASES["random"](4, 10, seed=2)
    scales = torch.tensor([[1e-3], [1.0], [7.0], [1e4]], dtype=torch.float64)
    method = MGDA(normalization="l2")
    a = method.weights_from_gram(jac @ jac.T)
    b = method.weights_from_gram((scales * jac) @ (scales * jac).T)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_mgda_loss_normalisations() -> None:
    jac = HARD_CASES["random"](3, 8, seed=4)
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    norms = jac.norm(dim=1)
    for normalization, divisor in (("loss", losses), ("loss+", losses * norms)):
        got = MGDA(normalization=normalization).aggregate(jac, losses=losses)
        scaled = jac / divisor[:, None]
        alpha = MGDA().weights_from_gram(scaled @ scaled.T)
        torch.testing.assert_close(got, alpha @ jac)  # weights of ĝ applied to the raw g
    with pytest.raises(ConfigError, match="normalization 'loss' needs the task losses"):
        MGDA(normalization="loss").aggregate(jac)
    with pytest.raises(TaskDataError, match="positive finite losses"):
        MGDA(normalization="loss").aggregate(jac, losses=torch.tensor([1.0, 0.0, 2.0]))


# ---------------------------------------------------------------------------- UPGrad, DualProj


@pytest.mark.parametrize("method", [UPGrad(), DualProj()], ids=str)
@pytest.mark.parametrize("jac", HARD)
def test_dual_cone_methods_do_not_conflict(method: UPGrad | DualProj, jac: Tensor) -> None:
    update = method.aggregate(jac)
    assert_non_conflicting(jac, update, method.last_weights())


def test_dualproj_is_the_projection_of_the_sum() -> None:
    jac = HARD_CASES["random"](4, 6, seed=1)
    update = DualProj().aggregate(jac)
    target = jac.sum(dim=0).numpy()
    res = minimize(
        lambda x: 0.5 * np.sum((x - target) ** 2),
        target,
        jac=lambda x: x - target,
        constraints=[
            {"type": "ineq", "fun": lambda x: jac.numpy() @ x, "jac": lambda x: jac.numpy()}
        ],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    assert np.linalg.norm(update.numpy() - target) <= np.linalg.norm(res.x - target) + 1e-7


def test_upgrad_is_the_sum_of_projections_and_keeps_aligned_gradients() -> None:
    jac = HARD_CASES["random"](3, 5, seed=8)
    parts = [UPGrad(pref_vector=list(np.eye(3)[i])).aggregate(jac) for i in range(3)]
    torch.testing.assert_close(UPGrad().aggregate(jac), sum(parts))
    # every pair of gradients agrees: each is its own projection, UPGrad is the sum
    aligned = HARD_CASES["nearly_collinear"](5, 8, seed=0)
    assert bool(((aligned @ aligned.T) > 0).all())
    torch.testing.assert_close(UPGrad().aggregate(aligned), aligned.sum(dim=0))
    torch.testing.assert_close(DualProj().aggregate(aligned), aligned.sum(dim=0))


def test_pref_vector_length_must_match_the_tasks() -> None:
    with pytest.raises(ConfigError, match="option 'pref_vector' has 2 entries but there are 3"):
        UPGrad(pref_vector=[1.0, 1.0]).aggregate(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="option 'pref_vector' has 2 entries"):
        DualProj(pref_vector=[1.0, 1.0]).bind(["a", "b", "c"])


# ---------------------------------------------------------------------------- CAGrad


def test_cagrad_with_c_zero_is_the_sum() -> None:
    jac = HARD_CASES["conflicting"](4, 9, seed=3)
    torch.testing.assert_close(CAGrad(c=0.0).aggregate(jac), jac.sum(dim=0))


def primal_value(jac: np.ndarray, d: np.ndarray) -> float:
    return float(np.min(jac @ d))


def dense_primal(jac: np.ndarray, c: float) -> float:
    """max_d min_i g_iᵀd s.t. ‖d − g₀‖ ≤ c‖g₀‖, by SLSQP on (d, z) from several starts."""
    g0 = jac.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    p = jac.shape[1]
    cons = [
        {"type": "ineq", "fun": lambda x: jac @ x[:p] - x[p]},
        {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:p] - g0) ** 2)},
    ]
    best = -np.inf
    for start in [g0, *jac]:
        x0 = np.concatenate([start, [np.min(jac @ start) - 1.0]])
        res = minimize(
            lambda x: -x[p],
            x0,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        if res.success and np.sum((res.x[:p] - g0) ** 2) <= radius**2 * (1 + 1e-8):
            best = max(best, primal_value(jac, res.x[:p]))
    return best


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 2.0])
@pytest.mark.parametrize("name", list(HARD_CASES))
def test_cagrad_solves_its_primal(c: float, name: str) -> None:
    jac = HARD_CASES[name](3, 5, seed=11)
    t = jac.shape[0]
    d = (CAGrad(c=c, rescale=0).aggregate(jac) / t).numpy()
    g0 = jac.mean(dim=0).numpy()
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9) + 1e-15
    scale = float(jac.norm(dim=1).max()) ** 2
    assert primal_value(jac.numpy(), d) >= dense_primal(jac.numpy(), c) - 1e-7 * scale


@pytest.mark.parametrize("c", [0.2, 1.5])
@pytest.mark.parametrize("jac", HARD)
def test_cagrad_has_zero_duality_gap(c: float, jac: Tensor) -> None:
    """Primal value of d = dual value of the w recovered from the weights: both are optimal."""
    t = jac.shape[0]
    method = CAGrad(c=c, rescale=0)
    d = method.aggregate(jac) / t
    g0 = jac.mean(dim=0)
    radius = c * float(g0.norm())
    assert float((d - g0).norm()) <= radius * (1 + 1e-9) + 1e-15
    primal = float((jac @ d).min())
    w = method.last_weights() / t - 1.0 / t  # (√φ/‖g_w‖)·w*
    dual = np.inf
    if float(w.sum()) > 0:
        gw = (w / w.sum()) @ jac
        dual = float(gw @ g0) + radius * float(gw.norm())
    hull = MGDA().aggregate(jac) / t
    if float(hull.norm()) <= 1e-7 * float(jac.norm(dim=1).max()):  # g_w = 0 is feasible
        dual = min(dual, 0.0)
    assert primal >= dual - 1e-12 * float(jac.norm(dim=1).max()) ** 2


def test_cagrad_rescale_divides_the_update() -> None:
    jac = HARD_CASES["random"](3, 6, seed=2)
    raw = CAGrad(c=0.5, rescale=0).aggregate(jac)
    torch.testing.assert_close(CAGrad(c=0.5, rescale=1).aggregate(jac), raw / 1.25)
    torch.testing.assert_close(CAGrad(c=0.5, rescale=2).aggregate(jac), raw / 1.5)


# ---------------------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("jac", HARD)
def test_imtl_g_equal_projections_on_unit_gradients(jac: Tensor) -> None:
    method = IMTLG()
    update = method.aggregate(jac)
    alpha = method.last_weights()
    norms = jac.norm(dim=1)
    keep = norms > 0
    proj = (jac[keep] @ update) / norms[keep]
    scale = float((alpha.abs() * norms).sum())
    assert float(proj.max() - proj.min()) <= 1e-8 * scale
    assert abs(float(alpha.sum()) - jac.shape[0]) < 1e-8 or not keep.all()


def test_imtl_g_direction_ignores_one_task_scale() -> None:
    jac = HARD_CASES["random"](4, 12, seed=6)
    scaled = jac * torch.tensor([[1.0], [30.0], [1.0], [0.01]], dtype=torch.float64)
    a, b = IMTLG().aggregate(jac), IMTLG().aggregate(scaled)
    torch.testing.assert_close(a / a.norm(), b / b.norm())


# ---------------------------------------------------------------------------- Nash-MTL, FairGrad


@pytest.mark.parametrize("jac", [j for j in HARD if "conflicting" not in j.id])
def test_nash_mtl_bargaining_equation(jac: Tensor) -> None:
    gram = jac @ jac.T
    alpha = NashMTL().weights_from_gram(gram)
    keep = gram.diagonal() > 0
    torch.testing.assert_close(
        (gram @ alpha * alpha)[keep],
        torch.ones(int(keep.sum()), dtype=torch.float64),
        rtol=1e-9,
        atol=0,
    )


def test_nash_mtl_is_invariant_to_task_gradient_scales() -> None:
    jac = HARD_CASES["random"](4, 12, seed=7)
    scaled = jac * torch.tensor([[1e-3], [2.0], [1.0], [5e3]], dtype=torch.float64)
    torch.testing.assert_close(NashMTL().aggregate(jac), NashMTL().aggregate(scaled))


def test_nash_mtl_stops_at_a_pareto_stationary_point() -> None:
    jac = HARD_CASES["conflicting"](5, 9, seed=0)
    assert float(NashMTL().aggregate(jac).abs().max()) == 0.0


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("jac", [j for j in HARD if "conflicting" not in j.id][::3])
def test_fairgrad_equation(alpha: float, jac: Tensor) -> None:
    gram = jac @ jac.T
    w = FairGrad(alpha=alpha).weights_from_gram(gram)
    keep = gram.diagonal() > 0
    torch.testing.assert_close(
        (gram @ w)[keep] * w[keep] ** (1 / alpha),
        torch.ones(int(keep.sum()), dtype=torch.float64),
        rtol=1e-9,
        atol=0,
    )


def test_fairgrad_with_alpha_one_is_nash_mtl() -> None:
    jac = HARD_CASES["dominant_norm"](4, 12, seed=7)
    torch.testing.assert_close(FairGrad(alpha=1.0).aggregate(jac), NashMTL().aggregate(jac))
