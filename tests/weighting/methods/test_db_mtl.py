"""DB-MTL: closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import DBMTL
from tests.weighting._loss_toy import TASKS, Toy


def test_db_mtl_two_steps_by_hand() -> None:
    """ĝ ← β_k ĝ + (1 − β_k) ∇log L, update Σ_i (max‖ĝ‖/‖ĝ_i‖) ĝ_i; heads get ∇log L_i."""
    beta, sigma = 0.8, 0.5
    method, model = DBMTL(beta=beta, beta_sigma=sigma), Toy()
    average = torch.zeros(3, 5, dtype=torch.float64)
    for k in (1, 2):
        model.zero_grad()
        losses = model.losses()
        log_grads = torch.stack(
            [
                torch.autograd.grad((losses[t] + 1e-8).log(), model.theta, retain_graph=True)[0]
                for t in TASKS
            ]
        )
        head_grads = [
            torch.autograd.grad((losses[t] + 1e-8).log(), model.bias[t], retain_graph=True)[0]
            for t in TASKS
        ]
        record = method.backward(losses, model)
        beta_k = beta / k**sigma
        average = beta_k * average + (1 - beta_k) * log_grads
        norms = average.norm(dim=1)
        alpha = norms.max() / norms
        torch.testing.assert_close(model.theta.grad, alpha @ average, rtol=1e-6, atol=1e-12)
        for t, g in zip(TASKS, head_grads, strict=True):
            torch.testing.assert_close(model.bias[t].grad, g)
        assert [record.weights[t] for t in TASKS] == pytest.approx(alpha.tolist(), rel=1e-6)
        with torch.no_grad():
            model.theta -= 0.05 * model.theta.grad
    # every task contributes a vector of the largest norm
    contributions = (alpha.unsqueeze(1) * average).norm(dim=1)
    torch.testing.assert_close(contributions, contributions.max().expand(3))
