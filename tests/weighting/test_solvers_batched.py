"""The batched dual-cone solver: one factorisation of G for many lower bounds."""

from __future__ import annotations

import numpy as np
import pytest

from mtlkit.weighting import _qp
from mtlkit.weighting._qp import (
    lower_bounded_kkt_violation,
    lower_bounded_qp,
    lower_bounded_qps,
)

from .samplers import HARD_CASES
from .test_solvers_qp import brute_lower_bounded

CASES = [
    (name, t, p)
    for name in HARD_CASES
    for t, p in [(3, 2), (6, 20), (10, 40)]
    if not (name == "conflicting" and p < t)  # strongly conflicting rows need P ≥ T
]


@pytest.mark.parametrize(("name", "t", "p"), CASES)
def test_rows_match_the_single_solver_and_brute_force(name: str, t: int, p: int) -> None:
    jac = HARD_CASES[name](t, p, 0).numpy()
    gram = jac @ jac.T
    scale = gram.diagonal().max()
    rng = np.random.default_rng(t)
    lowers = np.vstack([np.eye(t), rng.random((2, t)), np.ones((1, t))])
    batch = lower_bounded_qps(gram, lowers)
    assert batch.shape == lowers.shape
    for u, v in zip(lowers, batch, strict=True):
        single = lower_bounded_qp(gram, u)
        np.testing.assert_allclose(v, single, rtol=1e-12, atol=1e-12 * np.abs(single).max())
        assert (v - u).min() >= 0
        assert lower_bounded_kkt_violation(gram / scale, v, u) <= _qp.KKT_TOL
        if t <= 6:
            assert 0.5 * v @ gram @ v <= brute_lower_bounded(gram, u) + 1e-12 * scale


def test_only_failed_rows_are_enumerated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose NNLS gives up is solved by enumeration; the others keep the NNLS answer."""
    jac = HARD_CASES["random"](4, 6, 1).numpy()
    gram = jac @ jac.T
    lowers = np.eye(4)
    want = lower_bounded_qps(gram, lowers)
    original, calls = _qp._nnls, []

    def flaky(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        calls.append(1)
        return None if len(calls) == 2 else original(a, b)

    enumerated: list[np.ndarray] = []
    enumerate_original = _qp._enumerate_lower_bounded
    monkeypatch.setattr(_qp, "_nnls", flaky)
    monkeypatch.setattr(
        _qp,
        "_enumerate_lower_bounded",
        lambda g, u: enumerated.append(u) or enumerate_original(g, u),
    )
    got = lower_bounded_qps(gram, lowers)
    assert len(enumerated) == 1 and np.array_equal(enumerated[0], lowers[1])
    np.testing.assert_allclose(got, want, atol=1e-9)


def kkt_by_definition(gram: np.ndarray, v: np.ndarray, u: np.ndarray) -> float:
    """max of |(Gv)_i| on free i (v_i > u_i), of −(Gv)_i, and of u_i − v_i."""
    grad = gram @ v
    free = v - u > 1e-12 * max(1.0, float(np.abs(v).max()))
    parts = [abs(grad[i]) for i in range(len(v)) if free[i]]
    parts += [max(0.0, -g) for g in grad] + [max(0.0, a - b) for a, b in zip(u, v, strict=True)]
    return max(parts)


def test_vectorised_kkt_check_follows_the_definition() -> None:
    rng = np.random.default_rng(0)
    jac = rng.standard_normal((5, 3))
    gram = jac @ jac.T
    lowers = rng.random((4, 5))
    vs = lowers + np.abs(rng.standard_normal((4, 5))) * (rng.random((4, 5)) > 0.5)
    vs[3, 0] = lowers[3, 0] - 0.5  # infeasible
    got = _qp._lower_bounded_kkt_violations(gram, vs, lowers)
    want = [kkt_by_definition(gram, v, u) for v, u in zip(vs, lowers, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    for v, u, g in zip(vs, lowers, got, strict=True):
        assert lower_bounded_kkt_violation(gram, v, u) == pytest.approx(g, rel=1e-14)
    v_opt = lower_bounded_qp(gram, lowers[0])
    assert _qp._lower_bounded_kkt_violations(gram, v_opt[None], lowers[:1])[0] < 1e-12


def test_bad_shapes_and_zero_gram() -> None:
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        lower_bounded_qps(np.eye(3), np.ones(3))
    np.testing.assert_array_equal(lower_bounded_qps(np.zeros((3, 3)), np.eye(3)), np.eye(3))
