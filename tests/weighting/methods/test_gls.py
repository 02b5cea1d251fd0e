"""GLS (geometric loss strategy): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import GLS
from tests.weighting._loss_toy import TASKS, shared_grad_of


def test_gls_gradient_closed_form() -> None:
    """∇ (Π L_i)^(1/T) = (GLS/T) Σ_i ∇L_i / L_i."""
    grad, model = shared_grad_of("gls", lambda m: m.losses())
    losses = model.losses()
    gls = math.prod(v.item() for v in losses.values()) ** (1 / 3)
    expected = sum(torch.autograd.grad(losses[t], model.theta)[0] / losses[t].item() for t in TASKS)
    torch.testing.assert_close(grad, gls / 3 * expected, rtol=1e-10, atol=1e-12)
    record = GLS().backward(model.losses(), model)
    assert sum(record.weights[t] * losses[t].item() for t in TASKS) == pytest.approx(gls)
