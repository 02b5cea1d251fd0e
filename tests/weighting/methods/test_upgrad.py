"""UPGrad: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import numpy as np
import torch

from mtlkit.weighting import DualProj, UPGrad
from tests.weighting.samplers import HARD_CASES


def test_upgrad_is_the_sum_of_projections_and_keeps_aligned_gradients() -> None:
    jac = HARD_CASES["random"](3, 5, seed=8)
    parts = [UPGrad(pref_vector=list(np.eye(3)[i])).aggregate(jac) for i in range(3)]
    torch.testing.assert_close(UPGrad().aggregate(jac), sum(parts))
    # every pair of gradients agrees: each is its own projection, UPGrad is the sum
    aligned = HARD_CASES["nearly_collinear"](5, 8, seed=0)
    assert bool(((aligned @ aligned.T) > 0).all())
    torch.testing.assert_close(UPGrad().aggregate(aligned), aligned.sum(dim=0))
    torch.testing.assert_close(DualProj().aggregate(aligned), aligned.sum(dim=0))
