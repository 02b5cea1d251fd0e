"""IMTL-L: closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import torch

from mtlkit.weighting import IMTLL
from tests.weighting._loss_toy import TASKS


def test_imtl_l_scales_converge_to_unit_scaled_losses() -> None:
    method = IMTLL()
    method.bind(TASKS)
    losses = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    objective, weights = method.combine(losses)
    objective.backward()
    torch.testing.assert_close(method.scales.grad, losses.float() - 1)  # e^0 L − 1
    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))
    opt = torch.optim.Adam(method.parameters(), lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        method.combine(losses)[0].backward()
        opt.step()
    scaled = method.scales.detach().double().exp() * losses
    torch.testing.assert_close(scaled, torch.ones(3, dtype=torch.float64), rtol=1e-3, atol=0)
