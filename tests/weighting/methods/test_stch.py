"""STCH (smooth Tchebycheff): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import STCH
from tests.weighting._loss_toy import TASKS


def test_stch_warms_up_with_si_then_smooths_the_max_of_normalised_log_losses() -> None:
    stch = STCH(mu=0.5, warmup_epochs=2)
    stch.bind(TASKS)
    losses = torch.tensor([0.4, 3.0, 0.05], dtype=torch.float64, requires_grad=True)
    objective, weights = stch.combine(losses)
    assert objective.item() == pytest.approx(losses.log().sum().item())
    torch.testing.assert_close(weights, 1 / losses.detach())
    stch.on_epoch_end(0, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert stch.nadir is None
    nadir = {"a": 0.8, "b": 2.0, "c": 0.1}
    stch.on_epoch_end(1, nadir)
    assert stch.nadir == [0.8, 2.0, 0.1]
    objective, weights = stch.combine(losses)
    f = [math.log(v / nadir[t]) for v, t in zip(losses.tolist(), TASKS, strict=True)]
    assert objective.item() == pytest.approx(3 * 0.5 * math.log(sum(math.exp(x / 0.5) for x in f)))
    (grad,) = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(grad, weights)
    assert sum((weights * losses.detach()).tolist()) == pytest.approx(3.0)  # T · Σ p_i


def test_stch_small_mu_concentrates_on_the_worst_normalised_task() -> None:
    stch = STCH(mu=1e-3, warmup_epochs=1)
    stch.on_epoch_end(0, {"a": 1.0, "b": 10.0, "c": 0.1})
    _, weights = stch.combine(torch.tensor([0.5, 9.0, 0.2], dtype=torch.float64))
    # normalised: 0.5, 0.9, 2.0 → task c is the worst off
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.0, 3 / 0.2], dtype=torch.float64))
