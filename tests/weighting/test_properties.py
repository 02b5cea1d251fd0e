"""Properties every registered weighting method must have, applied to each one in turn.

The methods are read from ``mtlkit.weighting.WEIGHTINGS`` (after importing every module of the
package), so a method registered later is tested without editing this file. ``BUILD_ARGS``
lists the hyper-parameters a method needs to be constructed; a method whose constructor takes
``seed`` is randomised, and is exempt from permutation equivariance only.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting.gradient import task_jacobian
from tests.weighting._methods import (
    LOSS_TRANSFORM,
    METHODS,
    SUM_SCALE,
    bound,
    issubclass_safe,
    losses_of,
    make,
    randomised,
    step,
)
from tests.weighting._models import mlp_model, shared_grad


@pytest.mark.parametrize("name", METHODS)
def test_permutation_equivariance(name: str) -> None:
    """Listing the tasks in another order changes nothing: same weights by task, same update."""
    if randomised(name):
        pytest.skip("randomised method: its draws follow the task order")
    model, x = mlp_model()
    rec_a, grads_a = step(make(name), model, losses_of(model, x))
    rec_b, grads_b = step(make(name), model, losses_of(model, x, ["t2", "t0", "t1"]))
    torch.testing.assert_close(grads_b, grads_a, rtol=1e-6, atol=1e-9)
    for t in model.task_names:
        assert rec_b.weights[t] == pytest.approx(rec_a.weights[t], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_equal_gradients_give_the_common_direction(name: str) -> None:
    """T identical task gradients g give c·g with c > 0 (c = T where the method says so)."""
    model, x = mlp_model()
    for head in model.heads[1:]:
        head.load_state_dict(model.heads[0].state_dict())
    method = make(name)
    outs = model(x)
    losses = {t: o.pow(2).mean() for t, o in outs.items()}
    (g,) = torch.autograd.grad(losses["t0"], model.encoder[0].weight, retain_graph=True)
    step(method, model, losses)
    got = model.encoder[0].weight.grad
    c = float((got * g).sum() / (g * g).sum())
    assert c > 0
    torch.testing.assert_close(got, c * g, rtol=1e-6, atol=1e-10)
    doc = inspect.getdoc(type(method.aggregator if name == "compose" else method)) or ""
    if SUM_SCALE.search(doc):
        assert c == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("name", [n for n in METHODS if issubclass_safe(WEIGHTINGS.lookup(n))])
def test_backward_equals_aggregate_of_the_explicit_jacobian(name: str) -> None:
    """On a tiny HPS model, backward's shared gradient is aggregate(J) of the explicit J."""
    model, x = mlp_model()
    method = make(name)
    twin = copy.deepcopy(method)  # same state (and random generator) for aggregate
    for _ in range(2):  # the second step exercises the recorded-layer Gramian path
        losses = losses_of(model, x)
        stacked = torch.stack(list(losses.values()))
        bound(twin, model)
        if hasattr(twin, "observe_losses"):  # methods that read the losses too (GradNorm)
            twin.observe_losses(stacked.detach())
        stacked = LOSS_TRANSFORM.get(name, lambda v: v)(stacked)
        jac = task_jacobian(stacked, model.shared_parameters())
        want = twin.aggregate(jac)
        step(method, model, losses)
        torch.testing.assert_close(shared_grad(model), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip(name: str) -> None:
    """A method restored from its state dict takes the same next step as the original."""
    model, x = mlp_model()
    method = make(name)
    for k in range(2):
        step(method, model, losses_of(model, x + 0.1 * k))
    method.on_epoch_end(0, {t: 1.0 + i for i, t in enumerate(model.task_names)})
    restored = make(name)
    restored.load_state_dict(copy.deepcopy(method.state_dict()))
    rec_a, grads_a = step(method, model, losses_of(model, x + 0.5))
    rec_b, grads_b = step(restored, model, losses_of(model, x + 0.5))
    torch.testing.assert_close(grads_b, grads_a)
    assert rec_b.weights == pytest.approx(rec_a.weights)


@pytest.mark.parametrize("name", METHODS)
def test_zero_gradient_task_gives_no_nan(name: str) -> None:
    """A task whose loss does not depend on the parameters leaves every gradient finite."""
    model, x = mlp_model()
    method = make(name)
    for _ in range(2):
        outs = model(x)
        losses = {t: o.pow(2).mean() for t, o in outs.items()}
        losses["t1"] = 0.0 * outs["t1"].sum() + 1.0
        record, grads = step(method, model, losses)
        assert torch.isfinite(grads).all()
        assert all(torch.isfinite(torch.tensor(list(record.weights.values()))))
