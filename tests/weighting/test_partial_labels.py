"""Partial steps: a task with no labels (a ``None`` loss) breaks no balancing method.

Applied to every method of ``mtlkit.weighting.WEIGHTINGS``: a step where task t1 is absent
gives exactly the update the method gives on t0 and t2 alone, leaves t1's head without a
gradient and t1's per-task state untouched, and later full steps keep working.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.tasks import IGNORE_INDEX
from mtlkit.tasks.tabular import cross_entropy, mse
from mtlkit.weighting import WEIGHTINGS, Weighting
from mtlkit.weighting._state import take as _take
from tests.weighting._methods import METHODS, losses_of, make
from tests.weighting._models import TinyHPS, mlp_model


def grads(model: TinyHPS) -> dict[str, Tensor | None]:
    return {
        n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()
    }


def run(method: Weighting, model: TinyHPS, losses: dict[str, Tensor | None]) -> dict:
    model.zero_grad(set_to_none=True)
    method.bind(list(losses))
    for param in method.parameters():
        param.grad = None
    method.backward(losses, model)
    return grads(model)


def partial(model: TinyHPS, x: Tensor, absent: str = "t1") -> dict[str, Tensor | None]:
    losses: dict[str, Tensor | None] = dict(losses_of(model, x))
    losses[absent] = None
    return losses


def task_state_of(method: Weighting, index: int) -> dict[str, object]:
    """The entries of task ``index`` in every per-task state attribute (and its children)."""
    out: dict[str, object] = {}
    for owner_name, owner in [("", method), *_children(method)]:
        for name, spec in type(owner).state_fields.items():
            if spec.axes is None:
                continue
            value = getattr(owner, name)
            if value is None or (isinstance(value, list) and not value):
                out[owner_name + name] = None
                continue
            taken = _take(value, spec.axes, [index])
            out[owner_name + name] = (
                taken.detach().clone() if isinstance(taken, Tensor) else copy.deepcopy(taken)
            )
    return out


def _children(method: Weighting) -> list[tuple[str, Weighting]]:
    return [(f"{k}.", v) for k, v in vars(method).items() if isinstance(v, Weighting)]


def same(a: object, b: object) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return bool(torch.equal(a.isnan(), b.isnan())) and bool(
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
        )
    return a == b


@pytest.mark.parametrize("name", METHODS)
def test_absent_task_step_equals_the_method_on_the_present_tasks(name: str) -> None:
    model, x = mlp_model()
    alone = make(name)
    want = run(alone, model, {t: v for t, v in partial(model, x).items() if v is not None})
    method = make(name)
    method.bind(model.task_names)
    got = run(method, model, partial(model, x))
    for param, g in got.items():
        if param.startswith("heads.1."):
            assert g is None, f"{name}: the absent task's head got a gradient ({param})"
        else:
            assert g is not None and want[param] is not None
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, want[param], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", METHODS)
def test_absent_task_state_is_untouched_and_full_steps_keep_working(name: str) -> None:
    model, x = mlp_model()
    method = make(name)
    method.bind(model.task_names)
    opt = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=1e-2)
    for _ in range(2):
        run(method, model, dict(losses_of(model, x)))
        opt.step()
    method.on_epoch_end(1, {"t0": 1.0, "t1": 2.0, "t2": 3.0})
    method.on_epoch_end(2, {"t0": 0.9, "t1": 1.5, "t2": 2.0})
    before = task_state_of(method, 1)
    model.zero_grad(set_to_none=True)
    for param in method.parameters():
        param.grad = None
    record = method.backward(partial(model, x), model)
    assert record.weights["t1"] == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for p in method.parameters():  # learned per-task parameters: no gradient for t1
        assert p.grad is None or float(p.grad[1]) == 0.0
    after = task_state_of(method, 1)
    for key, value in before.items():
        assert same(after[key], value), f"{name}: state '{key}' of the absent task changed"
    opt.step()
    for absent in ("t0", "t2", None):  # other partial steps, then full steps
        losses = dict(losses_of(model, x)) if absent is None else partial(model, x, absent)
        got = run(method, model, losses)
        assert all(g is None or torch.isfinite(g).all() for g in got.values())
        opt.step()
    state = method.state_dict()
    restored = make(name)
    restored.bind(model.task_names)
    restored.load_state_dict(state)


@pytest.mark.parametrize("name", METHODS)
def test_single_task_steps_in_turn_then_a_full_step(name: str) -> None:
    """One-task-per-step training: each step gives a single present task."""
    model, x = mlp_model()
    method = make(name)
    method.bind(model.task_names)
    for present in ["t2", "t0", "t1", "t0"]:
        losses = {t: (v if t == present else None) for t, v in losses_of(model, x).items()}
        got = run(method, model, losses)
        for param, g in got.items():
            mine = param.startswith(f"heads.{present[1]}.") or param.startswith("encoder.")
            assert (g is not None) == mine, f"{name}: {param} with only {present} present"
    got = run(method, model, dict(losses_of(model, x)))
    assert all(g is not None and torch.isfinite(g).all() for g in got.values())


@pytest.mark.parametrize("name", ["ew", "uw", "mgda", "compose"])
def test_no_task_present_does_nothing(name: str) -> None:
    model, _ = mlp_model()
    method = make(name)
    record = method.backward(dict.fromkeys(model.task_names), model)
    assert record.weights == {"t0": 0.0, "t1": 0.0, "t2": 0.0}
    assert all(p.grad is None for p in model.parameters())


def test_a_left_out_task_is_still_an_error() -> None:
    model, x = mlp_model()
    method = make("ew")
    method.bind(model.task_names)
    losses = losses_of(model, x)
    del losses["t1"]
    with pytest.raises(TaskDataError, match="missing task"):
        method.backward(losses, model)


def test_losses_and_metrics_average_over_present_labels_only() -> None:
    """The mechanism's input: an all-missing batch gives a zero loss with zero gradient."""
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    want = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(cross_entropy(logits, labels), want)
    none = cross_entropy(logits, torch.full((4,), IGNORE_INDEX))
    none.backward()
    assert float(none.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    out = torch.randn(3)
    target = torch.tensor([1.0, float("nan"), 2.0])
    torch.testing.assert_close(mse(out, target), ((out[[0, 2]] - target[[0, 2]]) ** 2).mean())


def test_every_registered_method_is_covered() -> None:
    assert set(METHODS) == set(WEIGHTINGS.names())
    assert len(METHODS) >= 25
