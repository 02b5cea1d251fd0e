"""Gradient cosines and TAG affinity on models whose task gradients are known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlkit.analysis import Affinity, gradient_cosines, lookahead_affinity, measure_affinity
from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.errors import ConfigError
from mtlkit.nn import MTLModel
from mtlkit.tasks import Task
from mtlkit.weighting import get
from mtlkit.weighting.gradient import task_jacobian

from ..conftest import tiny_model, tiny_split, tiny_tasks

# task i reads θ·c_i: a step on task 1 moves θ along +c_1, which helps task 2 (c_1·c_2 > 0) and
# hurts task 3 (c_1·c_3 < 0)
DIRECTIONS = {"a": (1.0, 0.0), "b": (1.0, 1.0), "c": (-1.0, 0.2)}
TARGET = 10.0


class Linear(MTLModel):
    """Shared θ ∈ R²; task i outputs θ·c_i for every sample (its inputs are ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.task_names = list(DIRECTIONS)
        self.theta = nn.Parameter(torch.tensor([0.3, -0.2]))
        self.register_buffer("c", torch.tensor(list(DIRECTIONS.values())))

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.c @ self.theta
        return {t: inputs * values[i] for i, t in enumerate(self.task_names)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.theta]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []


def linear_setup(n: int = 8) -> tuple[Linear, list[Task], TensorLoader]:
    tasks = [Task(t, "regression", 1) for t in DIRECTIONS]
    x = torch.ones(n, 1)
    split = TensorSplit(x, {t: torch.full((n, 1), TARGET) for t in DIRECTIONS})
    return Linear(), tasks, TensorLoader(split, 4)


def cos(u: tuple[float, float], v: tuple[float, float]) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_gradient_cosines_of_a_known_jacobian() -> None:
    jac = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    c = gradient_cosines(jac)
    assert c[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert c[0, 3] == pytest.approx(-1.0)
    assert c[2].tolist() == [0.0, 0.0, 0.0, 0.0]  # a zero gradient has cosine 0
    assert np.allclose(c, c.T)


def test_measured_cosines_and_conflicts_match_the_closed_form() -> None:
    # L_i = (θ·c_i − 10)², ∇L_i = −2(10 − θ·c_i) c_i points along −c_i while θ·c_i < 10
    model, tasks, loader = linear_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    aff = measure_affinity(model, tasks, get("ew"), loader, optimizer=opt, epochs=2, every=1)
    assert aff.steps == 4
    names = list(DIRECTIONS)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert aff.cosine[i, j] == pytest.approx(cos(DIRECTIONS[a], DIRECTIONS[b]), abs=1e-6)
            assert aff.conflict[i, j] == (1.0 if aff.cosine[i, j] < 0 else 0.0)
    assert aff.conflict[0, 2] == 1.0 and aff.conflict[0, 1] == 0.0


def test_tag_affinity_helps_one_task_and_hurts_another() -> None:
    model, tasks, _ = linear_setup()
    x = torch.ones(4, 1)
    targets = {t: torch.full((4, 1), TARGET) for t in DIRECTIONS}
    outputs = model(x)
    losses = torch.stack([t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks])
    jac = task_jacobian(losses, [model.theta]).detach()
    lr = 0.01
    z = lookahead_affinity(model, x, targets, tasks, jac, [("theta", model.theta)], lr)
    # closed form: θ_i = θ − lr ∇L_i; Z(i→j) = 1 − (θ_i·c_j − 10)² / (θ·c_j − 10)²
    theta = model.theta.detach().double()
    c = model.c.double()
    for i in range(3):
        grad = -2 * (TARGET - theta @ c[i]) * c[i]
        step = theta - lr * grad
        for j in range(3):
            expected = 1 - (step @ c[j] - TARGET) ** 2 / (theta @ c[j] - TARGET) ** 2
            assert z[i, j] == pytest.approx(float(expected), rel=1e-5)
    assert z[0, 1] > 0  # a helps b
    assert z[0, 2] < 0  # a hurts c
    assert z[0, 0] > 0  # a step on a task lowers its own loss
    assert torch.equal(model.theta.detach(), theta.float())  # the model is untouched


def test_measuring_does_not_disturb_training() -> None:
    """Same seed, same data order, dropout: the measured run ends where the plain one does."""

    def run(measure: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        from mtlkit.nn import build_model
        from mtlkit.nn.encoders import MLPEncoder

        model = build_model("hps", MLPEncoder(6, hidden=[16], dropout=0.3), tiny_tasks())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        loader = TensorLoader(tiny_split(64), 16, shuffle=True)
        tasks = tiny_tasks()
        method = get("ew")
        if measure:
            measure_affinity(model, tasks, method, loader, optimizer=opt, epochs=2, every=1)
        else:
            for _ in range(2):
                for x, y in loader:
                    model.train()
                    out = model(x)
                    losses = {t.name: t.compute_loss(out[t.name], y[t.name]) for t in tasks}
                    opt.zero_grad()
                    method.backward(losses, model)
                    opt.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, measured = run(False), run(True)
    for key in plain:
        assert torch.equal(plain[key], measured[key]), key


def test_affinity_json_and_heatmaps_round_trip(tmp_path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = TensorLoader(tiny_split(64), 16)
    aff = measure_affinity(model, tiny_tasks(), get("ew"), loader, optimizer=opt, every=2)
    assert aff.steps == 2
    assert aff.seconds["measure"] > 0 and aff.seconds["train"] > 0
    paths = aff.save(tmp_path)
    assert {p.name for p in paths} == {"affinity.json", "cosine.png", "conflict.png", "tag.png"}
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = Affinity.load(tmp_path / "affinity.json")
    assert back.tasks == aff.tasks
    assert np.allclose(back.tag, aff.tag) and np.allclose(back.cosine, aff.cosine)


def test_malformed_affinity_json_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"tasks": ["x", "y"], "cosine": [[1]], "conflict": [], "tag": []}))
    with pytest.raises(ConfigError, match="'cosine' must be a 2×2 matrix"):
        Affinity.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Affinity.load(tmp_path / "missing.json")


def test_bad_options_are_config_errors() -> None:
    model, tasks, loader = linear_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ConfigError, match="'every' must be ≥ 1"):
        measure_affinity(model, tasks, get("ew"), loader, optimizer=opt, every=0)
    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        measure_affinity(model, tasks, get("ew"), loader, optimizer=opt, lr=-1.0)
