"""The state mechanism every method shares (weighting/_state.py, Weighting's state methods).

Declared fields merge along the class hierarchy; a wrong saved value is an error naming the
method and the field; ``to`` moves tensors (parameters in place) and leaves CPU-kept state;
every method's state survives the checkpoint split (safetensors + JSON) unchanged.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.train.state import join_state, split_state
from mtlkit.weighting import FAMO, UW, GradNorm, GradVac, MoCo, PCGrad, compose
from mtlkit.weighting._state import StateField
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradient import GradientWeighting
from tests.weighting._methods import METHODS, losses_of, make, step
from tests.weighting._models import mlp_model


def test_fields_of_a_class_include_those_of_its_bases() -> None:
    assert set(GradientWeighting.state_fields) == {"_step", "_cached"}
    assert set(GradNorm.state_fields) == {
        "_step",
        "_cached",
        "_weights",
        "_initial_losses",
        "_losses",
    }
    assert GradNorm.state_fields["_weights"].key_of("_weights") == "weights"
    assert Weighting.state_fields == {}


def test_every_saved_field_is_in_the_state_dict() -> None:
    for name in METHODS:
        method = make(name)
        state = method.state_dict()
        keys = {s.key_of(f) for f, s in type(method).state_fields.items() if s.saved}
        assert set(state) == {"tasks", *keys}, name


@pytest.mark.parametrize(
    ("method", "key", "value", "message"),
    [
        (GradVac(), "targets", torch.zeros(2, 3), r"GradVac: state 'targets' must have"),
        (PCGrad(), "generator", [1, 2, 3], r"PCGrad: state 'generator' must be a uint8"),
        (MoCo(), "iteration", "three", r"MoCo: state 'iteration' must be an integer"),
        (GradNorm(), "weights", [1.0, 1.0], r"GradNorm: state 'weights' must be a tensor"),
        (UW(), "log_vars", torch.zeros(5), r"UW: state 'log_vars' must be a tensor of shape"),
    ],
    ids=str,
)
def test_a_wrong_saved_value_names_the_method_and_the_field(
    method: Weighting, key: str, value: object, message: str
) -> None:
    method.bind(["a", "b"])
    with pytest.raises(ConfigError, match=message):
        method.load_state_dict({**method.state_dict(), key: value})


def test_per_task_state_must_have_one_entry_per_task() -> None:
    method = GradNorm()
    method.bind(["a", "b", "c"])
    state = {**method.state_dict(), "weights": torch.ones(2, dtype=torch.float64)}
    with pytest.raises(ConfigError, match="3 entries"):
        method.load_state_dict(state)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_to_moves_parameters_in_place_and_keeps_cpu_state(device: str) -> None:
    uw = UW()
    uw.bind(["a", "b"])
    (param,) = uw.parameters()
    assert uw.to(device) is uw
    assert uw.parameters()[0] is param and param.device.type == device
    famo = FAMO()
    famo.bind(["a", "b"])
    famo.to(device)
    assert famo.logits is not None and famo.logits.device.type == "cpu"
    moco = MoCo()
    moco.bind(["a", "b"])
    moco.aggregate(torch.eye(2, dtype=torch.float64))
    moco.to(device)
    assert moco._y is not None and moco._y.device.type == device
    assert moco._lambda is not None and moco._lambda.device.type == "cpu"


def test_compose_nests_its_parts_state() -> None:
    method = compose("uw", "pcgrad")
    method.bind(["a", "b"])
    state = method.state_dict()
    assert set(state) == {"tasks", "weighting", "aggregator"}
    assert set(state["aggregator"]) == {"tasks", "step", "cached_weights", "generator"}
    assert [id(p) for p in method.parameters()] == [id(p) for p in method.weighting.parameters()]


def test_a_state_field_without_a_key_drops_leading_underscores() -> None:
    assert StateField("int").key_of("__count") == "count"
    assert StateField("int", key="n").key_of("_count") == "n"


@pytest.mark.parametrize("name", METHODS)
def test_state_survives_the_checkpoint_split(name: str) -> None:
    """What a checkpoint stores (JSON skeleton + tensors) loads back into the same state."""
    model, x = mlp_model()
    method = make(name)
    for k in range(2):
        step(method, model, losses_of(model, x + 0.1 * k))
    skeleton, tensors = split_state(method.state_dict())
    restored = make(name)
    restored.load_state_dict(join_state(skeleton, tensors))
    again, again_tensors = split_state(restored.state_dict())
    assert again == skeleton
    assert tensors.keys() == again_tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(value, again_tensors[key]), f"{name}: {key}"
