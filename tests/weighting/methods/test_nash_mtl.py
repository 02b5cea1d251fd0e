"""Nash-MTL: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlkit.weighting import NashMTL
from tests.weighting.samplers import HARD, HARD_CASES


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
