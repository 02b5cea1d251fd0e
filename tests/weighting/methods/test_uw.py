"""UW (uncertainty weighting): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting import UW
from tests.weighting._loss_toy import TASKS


def test_uw_log_variance_gradient_and_closed_form_minimiser() -> None:
    uw = UW(init_log_var=0.3)
    uw.bind(TASKS)
    losses = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    objective, weights = uw.combine(losses)
    objective.backward()
    s = torch.full((3,), 0.3)
    torch.testing.assert_close(uw.log_vars.grad, 0.5 * (1 - torch.exp(-s) * losses.float()))
    torch.testing.assert_close(weights, 0.5 * torch.exp(-s).double())
    # minimising over s with the losses fixed lands on σ² = e^s = L
    opt = torch.optim.LBFGS(uw.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = uw.combine(losses)[0]
        value.backward()
        return value

    opt.step(closure)
    torch.testing.assert_close(uw.log_vars.detach().exp().double(), losses, rtol=1e-4, atol=0)
