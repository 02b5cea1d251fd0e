"""DualProj: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from mtlkit.weighting import DualProj
from tests.weighting.samplers import HARD_CASES


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
