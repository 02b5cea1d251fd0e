"""Static weights: L = Σ_i α_i L_i with fixed α given by task name."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting import WEIGHTINGS, Static
from tests.weighting._models import as_dict, mlp_model, shared_grad, task_losses


def test_update_is_the_gradient_of_the_weighted_sum_and_unnamed_tasks_get_the_default() -> None:
    model, x = mlp_model()
    losses, _ = task_losses(model, x)
    record = Static(weights={"t0": 2.0, "t2": 0.0}, default=0.5).backward(
        as_dict(model, losses), model
    )
    assert record.weights == {"t0": 2.0, "t1": 0.5, "t2": 0.0}
    got = shared_grad(model).clone()
    model.zero_grad()
    losses, _ = task_losses(model, x)
    (2.0 * losses[0] + 0.5 * losses[1]).backward()
    torch.testing.assert_close(got, shared_grad(model))


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_negative_or_non_finite_weights_are_config_errors(value: float) -> None:
    with pytest.raises(ConfigError, match="task 'a'"):
        Static(weights={"a": value})


def test_unknown_task_is_named_on_first_use() -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        Static(weights={"nope": 1.0}).bind(["a", "b"])


def test_capabilities_say_it_takes_the_config_task_weights() -> None:
    cls = WEIGHTINGS.lookup("static")
    assert cls.static_weights and cls.takes_task_weights
    others = [n for n in WEIGHTINGS.names() if WEIGHTINGS.lookup(n).takes_task_weights]
    assert others == ["static"]
