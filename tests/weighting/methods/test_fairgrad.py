"""FairGrad: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlkit.weighting import FairGrad, NashMTL
from tests.weighting.samplers import HARD, HARD_CASES


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
