"""ExcessMTL: closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import ExcessMTL
from tests.weighting._loss_toy import TASKS, Toy


def test_excess_mtl_weight_update_by_hand() -> None:
    eta = 0.3
    method, model = ExcessMTL(step_size=eta), Toy()
    sq_sum = torch.zeros(3, 5, dtype=torch.float64)
    log_w = torch.zeros(3, dtype=torch.float64)
    initial = None
    for _ in range(3):
        model.zero_grad()
        losses = model.losses()
        jac = torch.stack(
            [torch.autograd.grad(losses[t], model.theta, retain_graph=True)[0] for t in TASKS]
        )
        record = method.backward(losses, model)
        sq_sum += jac**2
        excess = (jac**2 / (sq_sum + 1e-7).sqrt()).sum(dim=1)
        if initial is None:
            initial = excess
        else:
            log_w += eta * excess / initial
        w = 3 * torch.softmax(log_w, dim=0)
        torch.testing.assert_close(model.theta.grad, w @ jac, rtol=1e-7, atol=1e-12)
        assert [record.weights[t] for t in TASKS] == pytest.approx(w.tolist(), rel=1e-7)
        with torch.no_grad():
            model.theta -= 0.05 * model.theta.grad
    assert sum(record.weights.values()) == pytest.approx(3.0)
    assert len(set(record.weights.values())) == 3  # the weights moved apart


def test_excess_mtl_zero_first_estimate_waits_for_a_positive_one() -> None:
    method = ExcessMTL(step_size=1.0)
    method.bind(["a", "b"])
    jac = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    method.aggregate(jac)
    method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    w = method.last_weights()
    assert w is not None and torch.isfinite(w).all()
    assert method.initial_excess is not None and (method.initial_excess > 0).all()
