"""Task subsampling: unbiased where the docstring says so (exact enumeration over the subsets),
uniform draws, partial steps, state and resume, and the config field."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mtlkit.config import parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.run import build_run, build_weighting
from mtlkit.tasks import Task
from mtlkit.weighting import EW, PCGrad, Static, TaskSubsample, UPGrad, Weighting, subsample
from tests.conftest import small_digits_config
from tests.weighting._models import TinyHPS, mlp_model

T, K = 4, 2


def _losses(model: TinyHPS, x: Tensor) -> dict[str, Tensor]:
    return {t: (i + 1) * o.pow(2).mean() for i, (t, o) in enumerate(model(x).items())}


def _grads(model: TinyHPS) -> dict[str, Tensor]:
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def _mean_over_subsets(
    method: TaskSubsample, model: TinyHPS, x: Tensor, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Tensor]:
    """Every parameter's gradient averaged over the C(T, k) equally likely draws."""
    subsets = list(itertools.combinations(model.task_names, K))
    total: dict[str, Tensor] = {}
    for subset in subsets:
        monkeypatch.setattr(method, "draw", lambda tasks, s=subset: list(s))
        model.zero_grad(set_to_none=True)
        method.backward(_losses(model, x), model)
        for n, g in _grads(model).items():
            total[n] = total.get(n, torch.zeros_like(g)) + g
    return {n: g / len(subsets) for n, g in total.items()}


WEIGHTS = {"t0": 2.0, "t1": 0.5, "t2": 1.0, "t3": 3.0}


@pytest.mark.parametrize("make", [EW, lambda: Static(weights=WEIGHTS)], ids=["ew", "static"])
def test_expectation_over_the_draws_is_the_full_objectives_gradient(
    make: type[Weighting], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = mlp_model(T)
    model.zero_grad(set_to_none=True)
    make().backward(_losses(model, x), model)
    full = _grads(model)
    mean = _mean_over_subsets(subsample(make(), K), model, x, monkeypatch)
    for name, g in full.items():
        torch.testing.assert_close(mean[name], g, rtol=1e-10, atol=1e-12)


def test_every_head_gets_its_unbiased_gradient_under_a_gradient_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = mlp_model(T)
    model.zero_grad(set_to_none=True)
    EW().backward(_losses(model, x), model)
    full = _grads(model)
    mean = _mean_over_subsets(subsample(UPGrad(), K), model, x, monkeypatch)
    heads = [n for n in full if n.startswith("heads.")]
    assert heads
    for name in heads:
        torch.testing.assert_close(mean[name], full[name], rtol=1e-10, atol=1e-12)


def test_the_draw_is_uniform_over_the_subsets() -> None:
    method = subsample(EW(), K, seed=3)
    tasks = [f"t{i}" for i in range(T)]
    draws = 6000
    counts = Counter(tuple(method.draw(tasks)) for _ in range(draws))
    assert set(counts) == set(itertools.combinations(tasks, K))  # in task order, all reachable
    p = 1 / len(counts)
    sigma = (p * (1 - p) / draws) ** 0.5
    for subset, c in counts.items():
        assert abs(c / draws - p) < 5 * sigma, subset


def test_the_step_runs_the_method_on_the_drawn_tasks_scaled_by_n_over_k() -> None:
    model, x = mlp_model(T)
    method = subsample(EW(), K, seed=1)
    record = method.backward(_losses(model, x), model)
    chosen = [t for t, w in record.weights.items() if w != 0]
    assert len(chosen) == K and record.extra["sampled_tasks"] == K
    assert all(record.weights[t] == pytest.approx(T / K) for t in chosen)
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    losses = _losses(model, x)
    (sum(losses[t] for t in chosen) * (T / K)).backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(got[name], g)


def test_absent_tasks_are_never_drawn() -> None:
    model, x = mlp_model(T)
    method = subsample(UPGrad(), K, seed=0)
    for _ in range(10):
        model.zero_grad(set_to_none=True)
        losses: dict[str, Tensor | None] = dict(_losses(model, x))
        losses["t1"] = None
        losses["t3"] = None
        record = method.backward(losses, model)
        assert record.weights["t1"] == 0.0 and record.weights["t3"] == 0.0
        assert record.weights["t0"] != 0.0 and record.weights["t2"] != 0.0  # 2 present = k


def _run(method: Weighting, model: TinyHPS, x: Tensor, steps: int) -> list[dict[str, float]]:
    out = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        out.append(method.backward(_losses(model, x), model).weights)
    return out


def test_a_resumed_method_draws_what_the_uninterrupted_one_draws() -> None:
    model, x = mlp_model(6)
    straight = subsample(PCGrad(seed=4), 3, seed=7)
    _run(straight, model, x, 3)
    state = straight.state_dict()
    expected = _run(straight, model, x, 4)
    resumed = subsample(PCGrad(seed=4), 3, seed=7)
    resumed.load_state_dict(state)
    assert _run(resumed, model, x, 4) == expected
    other = subsample(PCGrad(seed=4), 3, seed=8)
    other.load_state_dict(
        {**state, "generator": subsample(EW(), 3, seed=8).state_dict()["generator"]}
    )
    assert _run(other, model, x, 4) != expected  # the generator's state is what decides


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'tasks_per_step' must be ≥ 1"):
        subsample(EW(), 0)
    with pytest.raises(ConfigError, match="'tasks_per_step' must be an integer"):
        subsample(EW(), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'tasks_per_step' \(5\) is more than the number"):
        subsample(EW(), 5).bind(["a", "b"])


def test_config_field_wraps_the_method_and_errors_name_it() -> None:
    data = small_digits_config()
    data["weighting"] = {"name": "upgrad"}
    data["train"] = {**data.get("train", {}), "tasks_per_step": 1}
    run = build_run(parse_config(data))
    assert isinstance(run.weighting, TaskSubsample)
    assert isinstance(run.weighting.method, UPGrad) and run.weighting.tasks_per_step == 1
    with pytest.raises(ConfigError, match=r"field 'train\.tasks_per_step'"):
        parse_config({**data, "train": {**data["train"], "tasks_per_step": 0}})
    config = parse_config({**data, "train": {**data["train"], "tasks_per_step": 9}})
    tasks = [Task("a", "regression"), Task("b", "regression")]
    with pytest.raises(ConfigError, match=r"field 'train.tasks_per_step': 9 tasks per step"):
        build_weighting(config, tasks)


def test_a_resumed_training_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Through the Trainer: the draws' generator is saved with the checkpoint."""
    from mtlkit.train import Trainer
    from tests.conftest import tiny_model, tiny_tasks
    from tests.train._trainer import data

    class Interrupt(Exception):
        pass

    def stop_after_two(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == 2:
            raise Interrupt

    def trainer(folder: Path, **options: object) -> Trainer:
        method = subsample(PCGrad(seed=1), 1, seed=5)
        return Trainer(
            tiny_model(),
            tiny_tasks(),
            method,
            epochs=4,
            run_dir=folder,
            progress=False,
            device="cpu",
            optimizer_params={"lr": 0.01},
            **options,  # type: ignore[arg-type]
        )

    straight = trainer(tmp_path / "a")
    straight.fit(*data())
    broken = trainer(tmp_path / "b", callbacks=[stop_after_two])
    with pytest.raises(Interrupt):
        broken.fit(*data())
    resumed = trainer(tmp_path / "b")
    resumed.fit(*data(), resume=tmp_path / "b")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    other = trainer(tmp_path / "c")
    other.weighting._generator.manual_seed(0)  # type: ignore[attr-defined]
    other.fit(*data())  # a different stream of draws gives a different run
    assert any(
        not torch.equal(v, other.model.state_dict()[k])
        for k, v in straight.model.state_dict().items()
    )
