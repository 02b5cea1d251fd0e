"""EW (equal weighting): every task's loss has weight 1, the update is the sum of the gradients."""

from __future__ import annotations

import torch

from mtlkit.weighting import EW, WEIGHTINGS
from tests.weighting._models import as_dict, mlp_model, shared_grad, task_losses


def test_weights_are_one_and_the_update_is_the_gradient_of_the_sum() -> None:
    model, x = mlp_model()
    losses, _ = task_losses(model, x)
    record = EW().backward(as_dict(model, losses), model)
    assert record.weights == {"t0": 1.0, "t1": 1.0, "t2": 1.0}
    got = shared_grad(model).clone()
    model.zero_grad()
    losses, _ = task_losses(model, x)
    losses.sum().backward()
    torch.testing.assert_close(got, shared_grad(model), rtol=0, atol=0)


def test_ew_is_a_point_of_the_static_weights_search_space() -> None:
    assert WEIGHTINGS.lookup("ew").static_weights
    assert not WEIGHTINGS.lookup("ew").takes_task_weights
