"""IMTL-G: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlkit.weighting import IMTLG
from tests.weighting.samplers import HARD, HARD_CASES


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
