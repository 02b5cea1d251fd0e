"""The loss-based weighting methods together: SI, UW, DWA, RLW, GLS, IMTL-L, DB-MTL, FAMO, STCH,
ExcessMTL.

Properties (permutation equivariance, equal tasks ⇒ common direction), option validation, and
exact resumption from a state dict that went through a checkpoint's JSON + safetensors split.
Each method's closed-form cases are in ``methods/test_<method>.py``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn import ENCODERS, build_model
from mtlkit.tasks import Task
from mtlkit.weighting import (
    DBMTL,
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    SI,
    STCH,
    UW,
    ExcessMTL,
    Weighting,
    available,
    get,
)
from tests.weighting._loss_toy import (
    NAMES,
    TASKS,
    Toy,
    drive,
    make,
    shared_grad_of,
    through_checkpoint,
)


def test_every_method_is_registered_and_built_by_name() -> None:
    classes = [SI, UW, DWA, RLW, GLS, IMTLL, DBMTL, FAMO, STCH, ExcessMTL]
    for name, cls in zip(NAMES, classes, strict=True):
        assert name in available()
        method = get(name)
        assert type(method) is cls
        assert repr(method).startswith(cls.__name__ + "(")


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("dwa", {"temperature": 0}, "temperature"),
        ("dwa", {"temperature": -2.0}, "temperature"),
        ("rlw", {"seed": -1}, "seed"),
        ("rlw", {"seed": 1.5}, "seed"),
        ("uw", {"init_log_var": math.nan}, "init_log_var"),
        ("imtl_l", {"init_scale": math.inf}, "init_scale"),
        ("famo", {"lr": 0.0}, "lr"),
        ("famo", {"gamma": -0.1}, "gamma"),
        ("stch", {"mu": 0.0}, "mu"),
        ("stch", {"warmup_epochs": 0}, "warmup_epochs"),
        ("db_mtl", {"beta": 1.0}, "beta"),
        ("db_mtl", {"beta": -0.1}, "beta"),
        ("db_mtl", {"beta_sigma": -1}, "beta_sigma"),
        ("excess_mtl", {"step_size": 0}, "step_size"),
        ("excess_mtl", {"step_size": "big"}, "step_size"),
    ],
)
def test_bad_options_are_config_errors_naming_method_and_option(
    name: str, options: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^\w+: option '{option}' must be"):
        get(name, **options)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="temprature"):
        get("dwa", temprature=2.0)


@pytest.mark.parametrize("name", ["si", "gls", "famo", "stch", "db_mtl"])
def test_non_positive_loss_is_a_task_data_error_naming_the_task(name: str) -> None:
    model = Toy()
    losses = model.losses()
    losses["b"] = losses["b"] * 0 - 1.0
    with pytest.raises(TaskDataError, match="task 'b'"):
        make(name).backward(losses, model)


@pytest.mark.parametrize("cls", [UW, IMTLL])
def test_learnable_scales_need_the_tasks_before_the_optimiser(cls: type[Weighting]) -> None:
    method = cls()
    with pytest.raises(ConfigError, match="bind"):
        method.parameters()
    method.bind(TASKS)
    (param,) = method.parameters()
    assert param.shape == (3,) and param.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_equal_tasks_give_an_update_along_the_common_gradient(name: str) -> None:
    """Identical losses (so identical gradients): the update is a positive multiple of it."""
    grad, model = shared_grad_of(name, lambda m: {t: m.loss("b") for t in TASKS})
    (common,) = torch.autograd.grad(model.loss("b"), model.theta)
    cosine = torch.dot(grad, common) / (grad.norm() * common.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "rlw"])
def test_weights_are_permutation_equivariant(name: str) -> None:
    """Listing the tasks in another order permutes the weights with them (by task name)."""
    first, model_1 = drive(make(name), ["a", "b", "c"], steps=8)
    second, model_2 = drive(make(name), ["c", "a", "b"], steps=8)
    for w1, w2 in zip(first, second, strict=True):
        for t in TASKS:
            assert w2[t] == pytest.approx(w1[t], rel=1e-9, abs=1e-12)
    torch.testing.assert_close(model_1.theta, model_2.theta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).stateful])
def test_resumed_run_continues_exactly(name: str) -> None:
    """State through a checkpoint round trip: the continued run equals the uninterrupted one."""
    method = make(name)
    _, model = drive(method, TASKS, steps=5)
    state = through_checkpoint(method.state_dict())
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    straight, _ = drive(method, TASKS, steps=5, model=model)

    resumed_method = make(name)
    resumed_method.load_state_dict(state)
    resumed_model = Toy()
    resumed_model.load_state_dict(snapshot)
    resumed, _ = drive(resumed_method, TASKS, steps=5, model=resumed_model)
    assert resumed == straight
    assert straight[0] != straight[-1], "the state should have changed the weights"


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).stateful])
def test_reset_forgets_the_training_state(name: str) -> None:
    method = make(name)
    fresh, _ = drive(method, TASKS, steps=5)
    method.reset()
    again, _ = drive(method, TASKS, steps=5)
    assert again == fresh


@pytest.mark.parametrize("name", ["famo", "excess_mtl", "db_mtl", "uw"])
def test_hps_training_resumes_exactly(name: str) -> None:
    """A tiny HPS model trained with Adam: interrupt, checkpoint, resume, same trajectory."""
    tasks = [Task("a", "regression", 1), Task("b", "regression", 1)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)
    y = {"a": torch.randn(16, 1, generator=g), "b": 5 * torch.randn(16, 1, generator=g)}

    def build() -> tuple[nn.Module, Weighting, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model("hps", ENCODERS.build("mlp", 6, hidden=[8]), tasks)
        method = make(name)
        method.bind(["a", "b"])
        opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-2)
        return model, method, opt

    def train(model: nn.Module, method: Weighting, opt: torch.optim.Optimizer, steps: int) -> list:
        out = []
        for _ in range(steps):
            opt.zero_grad()
            pred = model(x)
            losses = {t: torch.nn.functional.mse_loss(pred[t], y[t]) for t in ("a", "b")}
            out.append(method.backward(losses, model).weights)
            opt.step()
        return out

    model, method, opt = build()
    train(model, method, opt, 4)
    saved_model = copy.deepcopy(model.state_dict())
    saved_method = through_checkpoint(method.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    straight = train(model, method, opt, 4)

    model2, method2, opt2 = build()
    model2.load_state_dict(saved_model)
    method2.load_state_dict(saved_method)
    opt2.load_state_dict(saved_opt)
    resumed = train(model2, method2, opt2, 4)
    assert resumed == straight
