"""Properties every architecture promises: a complete, disjoint and meaningful partition of its
parameters into shared and task-owned ones, and task isolation of the task-owned ones.

The helpers (tiny tasks, encoders and models) are in ``_architectures.py``, shared with the
other ``test_architectures_*`` files.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures import build_model
from mtlkit.tasks import Task
from tests.nn._architectures import (
    ARCH_PARAMS,
    ARCHS,
    ENCODER_KINDS,
    grads_of_task,
    make_encoder,
    make_inputs,
    make_model,
    one_thread,  # noqa: F401  (autouse fixture)
)


def test_every_architecture_of_the_issue_is_registered() -> None:
    assert set(ARCH_PARAMS) <= set(ARCHS)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_fit_every_task(arch: str, kind: str) -> None:
    model = make_model(arch, kind, n_tasks=3)
    outputs = model(make_inputs(kind, batch=4))
    assert {name: tuple(o.shape) for name, o in outputs.items()} == {
        "a": (4, 3),
        "b": (4, 1),
        "c": (4, 1),
    }
    assert all(torch.isfinite(o).all() for o in outputs.values())


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_partition_is_complete_and_disjoint(arch: str, kind: str) -> None:
    model = make_model(arch, kind, n_tasks=3)
    model.check_partition()
    shared = {id(p) for p in model.shared_parameters()}
    owned = [{id(p) for p in model.task_parameters(t)} for t in model.task_names]
    assert shared, "shared_parameters() is empty"
    assert all(owned), "a task owns no parameter"
    assert len(shared) == len(model.shared_parameters())
    every = [shared, *owned]
    assert sum(len(s) for s in every) == len(set().union(*every))  # disjoint
    assert set().union(*every) == {id(p) for p in model.parameters()}  # complete


def test_check_partition_catches_an_unclaimed_parameter() -> None:
    model = make_model("mmoe")
    model.extra = nn.Linear(2, 2)  # neither shared nor owned
    with pytest.raises(ConfigError, match="neither shared nor task-owned"):
        model.check_partition()


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_task_gradients_follow_the_partition(arch: str, kind: str) -> None:
    """A task's loss reaches all of its own parameters and none of another task's; every
    shared parameter is reached by at least two tasks (shared means: task gradients meet)."""
    model = make_model(arch, kind, n_tasks=3)
    per_task = {t: grads_of_task(model, kind, t, n_tasks=3) for t in model.task_names}
    owned = {t: model.task_parameters(t) for t in model.task_names}
    for task, grads in per_task.items():
        unused = [i for i, p in enumerate(owned[task]) if not grads[id(p)].abs().sum() > 0]
        assert not unused, f"{task}: its own parameters {unused} get no gradient from it"
        for other in model.task_names:
            if other != task:
                leaked = [float(grads[id(p)].abs().sum()) for p in owned[other]]
                assert max(leaked) == 0.0, f"loss of {task} reaches parameters of {other}"
    shared = {id(p) for p in model.shared_parameters()}
    for name, p in model.named_parameters():
        if id(p) in shared:
            reached = sum(int(g[id(p)].abs().sum() > 0) for g in per_task.values())
            assert reached >= 2, f"shared parameter {name} is reached by {reached} task(s)"


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_last_shared_layer_is_a_non_empty_part_of_the_shared_parameters(
    arch: str, kind: str
) -> None:
    model = make_model(arch, kind)
    getter = getattr(model, "last_shared_parameters", None)
    if getter is None:
        pytest.skip(f"{arch} relies on the weighting's fallback for the last shared layer")
    last = {id(p) for p in getter()}
    shared = {id(p) for p in model.shared_parameters()}
    assert last and last < shared


@pytest.mark.parametrize("arch", ARCHS)
def test_regularization_is_a_zero_scalar_by_default(arch: str) -> None:
    model = make_model(arch)
    model(make_inputs("mlp"))
    reg = model.regularization()
    assert reg.shape == () and float(reg) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_option_is_named(arch: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        make_model(arch, bogus=1)


@pytest.mark.parametrize(
    ("arch", "params", "option"),
    [
        ("mmoe", {"num_experts": 0}, "num_experts"),
        ("mmoe", {"expert_hidden": ()}, "expert_hidden"),
        ("mmoe", {"expert_hidden": (4, 0)}, "expert_hidden"),
        ("cgc", {"num_shared_experts": -1}, "num_shared_experts"),
        ("cgc", {"num_shared_experts": 0, "num_task_experts": 0}, "num_task_experts"),
        ("ple", {"num_levels": 0}, "num_levels"),
        ("ple", {"num_shared_experts": 0}, "num_shared_experts"),
        ("dselect_k", {"num_experts": 0}, "num_experts"),
        ("dselect_k", {"num_experts": 4, "k": 5}, "'k'"),
        ("dselect_k", {"k": 0}, "'k'"),
        ("dselect_k", {"gamma": 0.0}, "gamma"),
        ("dselect_k", {"entropy_reg": -1.0}, "entropy_reg"),
        ("cross_stitch", {"alpha_same": float("nan")}, "alpha_same"),
    ],
)
def test_bad_options_raise_config_errors_naming_architecture_and_option(
    arch: str, params: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError, match=f"architecture '{arch}'.*{option}"):
        make_model(arch, **params)


@pytest.mark.parametrize("arch", ARCHS)
def test_duplicate_task_names_are_rejected(arch: str) -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        build_model(arch, make_encoder("mlp"), [Task("a", "regression")] * 2)
