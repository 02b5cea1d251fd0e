"""FAMO: closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import FAMO
from tests.weighting._loss_toy import TASKS, shared_grad_of


def test_famo_first_step_weights_and_update() -> None:
    """z uniform at the start: w_i = (1/L_i) / Σ_j (1/L_j), and d = Σ_i w_i ∇L_i."""
    grad, model = shared_grad_of("famo", lambda m: m.losses())
    losses = model.losses()
    inv = torch.tensor([1 / losses[t].item() for t in TASKS], dtype=torch.float64)
    w = inv / inv.sum()
    expected = sum(
        w[i] * torch.autograd.grad(losses[t], model.theta)[0] for i, t in enumerate(TASKS)
    )
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_famo_raises_the_weight_of_the_task_that_improves_least() -> None:
    famo = FAMO(lr=0.05)
    famo.bind(["fast", "slow"])
    first = famo.combine(torch.tensor([1.0, 1.0], dtype=torch.float64))[1]
    assert first[0].item() == pytest.approx(first[1].item())
    for k in range(1, 6):  # the 'fast' loss halves each step, the 'slow' one barely moves
        famo.combine(torch.tensor([0.5**k, 0.99**k], dtype=torch.float64))
    assert famo.logits is not None
    z = torch.softmax(famo.logits, dim=0)
    assert z[1] > z[0]
    # δ of the first ξ step: z ⊙ (p − z·p) with p the log-loss decrease, here (log 2, ~0)
    fresh = FAMO(lr=0.05, gamma=0.0)
    fresh.bind(["fast", "slow"])
    fresh.update_logits(
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.99], dtype=torch.float64),
    )
    assert fresh.logits is not None
    # Adam's first step moves each coordinate by lr · sign(δ)
    p = torch.tensor([math.log(2), -math.log(0.99)], dtype=torch.float64)
    delta = 0.5 * (p - p.mean())
    torch.testing.assert_close(fresh.logits, -0.05 * delta.sign(), rtol=1e-6, atol=0)
