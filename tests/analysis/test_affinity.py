"""Gradient cosines and TAG affinity on models whose task gradients are known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlkit.analysis import Affinity, gradient_cosines, lookahead_affinity, measure_affinity
from mtlkit.analysis.affinity import format_estimate, is_precise, standard_error
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
            expected = 100 * (1 - (step @ c[j] - TARGET) ** 2 / (theta @ c[j] - TARGET) ** 2)
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
    aff = measure_affinity(model, tiny_tasks(), get("ew"), loader, optimizer=opt, every=2, epochs=1)
    assert aff.steps == 2 and aff.stop == "budget"
    assert aff.seconds["measure"] > 0 and aff.seconds["train"] > 0
    paths = aff.save(tmp_path)
    assert {p.name for p in paths} == {"affinity.json", "cosine.png", "conflict.png", "tag.png"}
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = Affinity.load(tmp_path / "affinity.json")
    assert back.tasks == aff.tasks
    assert np.allclose(back.tag, aff.tag) and np.allclose(back.cosine, aff.cosine)
    for measure in ("cosine", "conflict", "tag"):
        assert np.allclose(back.stderr(measure), aff.stderr(measure))
        assert np.allclose(back.samples(measure), aff.samples(measure))
    assert back.stop == "budget" and back.lr == pytest.approx(0.05)


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


# ---------------------------------------------------------------------------- uncertainty


def hand_stderr(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def test_standard_error_is_the_sample_std_over_root_n() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])[:, None, None] * np.ones((1, 2, 2))
    assert standard_error(x) == pytest.approx(np.full((2, 2), hand_stderr([1, 2, 3, 4])))
    assert hand_stderr([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert np.isnan(standard_error(x[:1])).all()  # one step: unknown, never ± 0


def test_measured_errors_match_a_hand_computation_over_the_history() -> None:
    model, tasks, loader = linear_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    aff = measure_affinity(model, tasks, get("ew"), loader, optimizer=opt, epochs=3, every=1)
    assert aff.steps == 6 and aff.stop == "budget"
    names = list(DIRECTIONS)
    for i in range(3):
        for j in range(3):
            tags = [h["tag"][i][j] for h in aff.history]
            assert aff.tag[i, j] == pytest.approx(sum(tags) / len(tags))
            assert aff.stderr("tag")[i, j] == pytest.approx(hand_stderr(tags), rel=1e-9)
            share = aff.conflict[i, j]
            assert aff.stderr("conflict")[i, j] == pytest.approx(
                math.sqrt(share * (1 - share) / (aff.steps - 1))
            )
    # a step of 0.01 on a loss of ~100 changes it by percents, not by 1e-6: readable units
    assert 0.1 < abs(aff.tag[0, 1]) < 100, names


def test_precision_rule_on_constructed_samples() -> None:
    base = np.array([[0.0, 2.0], [-1.0, 0.0]])
    signs = np.array([1.0, -1.0] * 10)[:, None, None]
    # alternating ±e around the means: s.e. = e / √(n − 1) = e / √19; RMS of scores = √2.5
    tight = base + 0.1 * signs  # s.e. 0.023 ≪ 0.25 · 1.58
    loose = base + 5.0 * signs  # s.e. 1.15 > 0.25 · 1.58
    assert is_precise(tight, 0.25)
    assert not is_precise(loose, 0.25)
    assert not is_precise(np.zeros((20, 2, 2)), 0.25)  # no scale: never "precise"


def test_measuring_stops_when_precise_or_at_the_cap() -> None:
    model, tasks, loader = linear_setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # the scores barely move between steps
    aff = measure_affinity(model, tasks, get("ew"), loader, optimizer=opt, every=1, min_measured=5)
    assert aff.stop == "precise" and aff.steps == 5  # no epoch budget: passes repeat

    torch.manual_seed(0)
    noise = TensorSplit(
        torch.randn(64, 6), {"cls": torch.randint(0, 3, (64,)), "reg": torch.randn(64, 1)}
    )
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    aff = measure_affinity(
        model,
        tiny_tasks(),
        get("ew"),
        TensorLoader(noise, 4, shuffle=True),
        optimizer=opt,
        every=1,
        min_measured=4,
        max_measured=12,
        rel_stderr=0.01,
    )
    assert aff.stop == "max_measured" and aff.steps == 12


def test_estimates_print_with_their_error() -> None:
    assert format_estimate(1.234, 0.40) == "+1.23 ± 0.40"
    assert format_estimate(-0.5, 0.0123) == "-0.500 ± 0.012"
    assert format_estimate(12.0, 3.0) == "+12.0 ± 3.0"
    assert format_estimate(1.2e-6, 2e-7) == "+1.20e-06 ± 2.0e-07"
    assert format_estimate(9.63e-4, 9.6e-5) == "+0.000963 ± 0.000096"
    assert format_estimate(0.25, float("nan")) == "+0.25"


def test_an_old_affinity_file_still_loads(tmp_path) -> None:
    """Version 1 (no 'version'): the lookahead was a fraction and no errors were saved."""
    history = [
        {"step": 0, "cosine": [[1, 0.5], [0.5, 1]], "tag": [[0.01, 0.02], [0.0, 0.01]]},
        {"step": 10, "cosine": [[1, -0.1], [-0.1, 1]], "tag": [[0.01, 0.04], [0.02, 0.01]]},
    ]
    old = {
        "tasks": ["x", "y"],
        "cosine": [[1, 0.2], [0.2, 1]],
        "conflict": [[0, 0.5], [0.5, 0]],
        "tag": [[0.01, 0.03], [0.01, 0.01]],
        "steps": 2,
        "history": history,
    }
    path = tmp_path / "affinity.json"
    path.write_text(json.dumps(old))
    aff = Affinity.load(path)
    assert aff.tag[0, 1] == pytest.approx(3.0)  # now in %
    assert aff.samples("tag")[:, 0, 1] == pytest.approx([2.0, 4.0])
    assert aff.stderr("tag")[0, 1] == pytest.approx(hand_stderr([2.0, 4.0]))
    # without history: the errors are unknown (NaN, null in JSON) and resampling says why
    del old["history"]
    path.write_text(json.dumps(old))
    bare = Affinity.load(path)
    assert np.isnan(bare.stderr("cosine")).all()
    with pytest.raises(ConfigError, match="no per-step measurements"):
        bare.samples("tag")
    again = Affinity.from_json(json.loads(json.dumps(bare.to_json())))
    assert np.isnan(again.stderr("tag")).all() and again.tag[0, 1] == pytest.approx(3.0)
    old["version"] = 7
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="'version' is 7"):
        Affinity.load(path)


def test_heatmap_cells_carry_the_error() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtlkit.analysis.affinity import draw_heatmap

    fig, ax = plt.subplots()
    m = np.array([[0.0, 1.234], [-0.5, 0.0]])
    se = np.array([[0.0, 0.4], [0.0123, 0.0]])
    draw_heatmap(ax, m, ["a", "b"], "tag", se)
    texts = {t.get_text() for t in ax.texts}
    assert {"+1.23\n± 0.40", "-0.500\n± 0.012"} <= texts
    plt.close(fig)
