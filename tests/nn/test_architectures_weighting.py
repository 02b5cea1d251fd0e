"""Every architecture trains with every registered loss-balancing method: two optimisation
steps on a tiny model give finite losses and move both shared and task-owned parameters."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures import ARCHITECTURES
from mtlkit.weighting import WEIGHTINGS, GradientWeighting, Weighting, get
from tests.nn._architectures import (
    losses_of,
    make_inputs,
    make_model,
    one_thread,  # noqa: F401  (autouse fixture)
)

TINY = {
    "mmoe": {"num_experts": 2, "expert_hidden": (4,)},
    "cgc": {"num_shared_experts": 1, "num_task_experts": 1, "expert_hidden": (4,)},
    "ple": {"num_levels": 2, "expert_hidden": (4,)},
    "dselect_k": {"num_experts": 3, "k": 2, "expert_hidden": (4,), "entropy_reg": 0.01},
}


def flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params]).clone()


GRADIENT_METHODS = [
    name for name in WEIGHTINGS.names() if issubclass(WEIGHTINGS.lookup(name), GradientWeighting)
]


@pytest.mark.parametrize("method_name", WEIGHTINGS.names())
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_two_steps_with_every_weighting_method(arch: str, method_name: str) -> None:
    try:
        method = get(method_name)
    except (ConfigError, TypeError) as err:
        pytest.skip(f"'{method_name}' cannot be built with its defaults: {err}")
    two_steps(arch, method)


@pytest.mark.parametrize("method_name", GRADIENT_METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_two_steps_with_gradient_methods_on_the_last_shared_layer(
    arch: str, method_name: str
) -> None:
    try:
        method = get(method_name, jacobian="last_shared")
    except (ConfigError, TypeError) as err:
        pytest.skip(f"'{method_name}' has no jacobian='last_shared' mode: {err}")
    two_steps(arch, method)


def two_steps(arch: str, method: Weighting) -> None:
    """Two SGD steps; finite losses; shared and every task's parameters move."""
    model = make_model(arch, "mlp", seed=0, **TINY.get(arch, {}))
    method.bind(model.task_names)
    params = list(model.parameters()) + list(method.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)
    shared0 = flat(model.shared_parameters())
    owned0 = {t: flat(model.task_parameters(t)) for t in model.task_names}
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        representation = None
        if method.needs_representation:
            outputs, representation = model.forward_with_representation(make_inputs("mlp"))
            del outputs
        losses = losses_of(model, "mlp", seed=step)
        assert all(torch.isfinite(v) for v in losses.values())
        regularization = model.regularization()
        if regularization.requires_grad:  # as the Trainer does: its own graph, added first
            regularization.backward()
        method.backward(losses, model, representation=representation)
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(flat(model.shared_parameters()), shared0)
    for task, before in owned0.items():
        assert not torch.equal(flat(model.task_parameters(task)), before), task
