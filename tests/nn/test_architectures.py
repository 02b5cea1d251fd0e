"""Properties every architecture promises: a complete, disjoint and meaningful partition of its
parameters into shared and task-owned ones, and task isolation of the task-owned ones.

The helpers at the top are shared with the other ``test_architectures_*`` files.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures import ARCHITECTURES, MTLModel, build_model
from mtlkit.nn.encoders import ConvEncoder, MLPEncoder
from mtlkit.tasks import Task

FEATURES = 5
ENCODER_KINDS = ("mlp", "cnn")
#: small settings for each architecture (several levels/experts, so every rule is exercised)
ARCH_PARAMS: dict[str, dict[str, Any]] = {
    "hps": {},
    "mmoe": {"num_experts": 3, "expert_hidden": (6,)},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 1, "expert_hidden": (6,)},
    "ple": {"num_levels": 3, "num_shared_experts": 1, "num_task_experts": 2, "expert_hidden": (6,)},
    "dselect_k": {"num_experts": 5, "k": 2, "expert_hidden": (6,)},
    "cross_stitch": {},
    "mtan": {},
}
ARCHS = ARCHITECTURES.names()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tasks(n: int = 2) -> list[Task]:
    """Up to three tasks of different kinds."""
    every = [
        Task("a", "classification", num_outputs=3),
        Task("b", "regression"),
        Task("c", "binary"),
    ]
    return every[:n]


def make_encoder(kind: str) -> nn.Module:
    if kind == "mlp":
        return MLPEncoder(FEATURES, hidden=(8, 6))
    return ConvEncoder(1, channels=(4, 6), out_features=8)


def make_inputs(kind: str, batch: int = 6, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, FEATURES) if kind == "mlp" else (batch, 1, 8, 8)
    return torch.randn(shape, generator=g)


def make_targets(tasks: list[Task], batch: int = 6, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for t in tasks:
        if t.kind == "classification":
            out[t.name] = torch.randint(0, t.num_outputs, (batch,), generator=g)
        elif t.kind == "binary":
            out[t.name] = torch.randint(0, 2, (batch,), generator=g).float()
        else:
            out[t.name] = torch.randn(batch, generator=g)
    return out


def make_model(arch: str, kind: str = "mlp", n_tasks: int = 2, seed: int = 0, **params: Any):
    torch.manual_seed(seed)
    options = {**ARCH_PARAMS.get(arch, {}), **params}
    return build_model(arch, make_encoder(kind), make_tasks(n_tasks), **options)


def losses_of(model: MTLModel, kind: str, n_tasks: int = 2, seed: int = 0) -> dict[str, Tensor]:
    tasks = make_tasks(n_tasks)
    outputs = model(make_inputs(kind, seed=seed))
    targets = make_targets(tasks, seed=seed + 1)
    return {t.name: t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks}


def grads_of_task(model: MTLModel, kind: str, task: str, n_tasks: int = 2) -> dict[int, Tensor]:
    """id(parameter) → gradient of ``task``'s loss alone (zeros where it does not reach)."""
    model.zero_grad(set_to_none=True)
    losses_of(model, kind, n_tasks)[task].backward()
    return {
        id(p): (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for p in model.parameters()
    }


# ---------------------------------------------------------------------------------- tests


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
