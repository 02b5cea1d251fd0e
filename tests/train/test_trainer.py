"""The Trainer: determinism, exact resume, bad input, non-finite losses, AMP, selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.errors import ConfigError, DatasetError, NonFiniteLossError, TaskDataError
from mtlkit.train import Trainer
from tests.conftest import tiny_split
from tests.train._trainer import data, make_trainer


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_run() -> None:
    a, b = make_trainer(), make_trainer()
    a.fit(*data())
    b.fit(*data())
    for key, value in params(a).items():
        assert torch.equal(value, params(b)[key]), key
    assert a.history[-1]["val"] == b.history[-1]["val"]


def test_different_seed_different_run() -> None:
    a, b = make_trainer(seed=0), make_trainer(seed=1)
    a.fit(*data())
    b.fit(*data())
    assert any(not torch.equal(v, params(b)[k]) for k, v in params(a).items())


class Interrupt(Exception):
    pass


def interrupt_after(epoch: int):
    def callback(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == epoch:
            raise Interrupt

    return callback


@pytest.mark.parametrize("weighting", ["ew", "rlw", "uw"])
def test_resume_is_exact(tmp_path: Path, weighting: str) -> None:
    straight = make_trainer(tmp_path / "a", weighting)
    straight.fit(*data())
    broken = make_trainer(tmp_path / "b", weighting, callbacks=[interrupt_after(2)])
    with pytest.raises(Interrupt):
        broken.fit(*data())
    resumed = make_trainer(tmp_path / "b", weighting)
    resumed.fit(*data(), resume=tmp_path / "b")
    assert resumed.epoch == 4
    for key, value in params(straight).items():
        assert torch.equal(value, params(resumed)[key]), key
    assert [r["val"] for r in straight.history] == [r["val"] for r in resumed.history]
    latest_a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    latest_b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(latest_a[k], latest_b[k]) for k in latest_a)
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    timing = {"time", "steps_per_second", "samples_per_second"}  # wall-clock values differ
    strip = [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines_a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines_b]


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=1).fit(*data())
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["manifest.json", "model.safetensors", "state.json", "state.safetensors"]
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["s:epoch"] == 1
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_missing_target_names_the_task() -> None:
    x = torch.randn(8, 6)
    split = TensorSplit(x, {"cls": torch.zeros(8, dtype=torch.long)})
    with pytest.raises(TaskDataError, match="task 'reg': the batch has no target"):
        make_trainer().fit(TensorLoader(split, 4))


def test_unknown_target_is_an_error() -> None:
    split = tiny_split(8)
    split.targets["extra"] = torch.zeros(8)
    with pytest.raises(TaskDataError, match="unknown task"):
        make_trainer().fit(TensorLoader(split, 4))


def test_label_out_of_range_during_training() -> None:
    split = tiny_split(8)
    split.targets["cls"][3] = 7
    with pytest.raises(TaskDataError, match="task 'cls': class label 7 is out of range"):
        make_trainer().fit(TensorLoader(split, 8))


def test_empty_split() -> None:
    empty = TensorSplit(
        torch.zeros(0, 6), {"cls": torch.zeros(0, dtype=torch.long), "reg": torch.zeros(0)}
    )
    with pytest.raises(DatasetError, match="train split is empty"):
        make_trainer().fit(TensorLoader(empty, 4))
    with pytest.raises(DatasetError, match="split is empty"):
        make_trainer().evaluate(TensorLoader(empty, 4))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=3)
    train, val = data()
    trainer.fit(train, val, stop_after=1)
    before = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    poisoned = tiny_split(64, 0)
    poisoned.targets["reg"][5] = float("inf")
    resumed = make_trainer(tmp_path, epochs=3)
    with pytest.raises(
        NonFiniteLossError,
        match=r"task 'reg': loss is (inf|nan) at step \d+ "
        r"\(epoch 2\)",
    ):
        resumed.fit(TensorLoader(poisoned, 16, shuffle=True), val, resume=tmp_path)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == before
    again = make_trainer(tmp_path, epochs=3)
    again.fit(*data(), resume=tmp_path)
    assert again.epoch == 3


def test_early_stopping_and_best_epoch() -> None:
    trainer = make_trainer(
        epochs=30, patience=2, optimizer_params={"lr": 0.5}, optimizer="sgd", scheduler="none"
    )
    result = trainer.fit(*data())
    values = [r["monitor"]["value"] for r in result.history]
    assert result.best_value == max(values)
    assert result.history[result.best_epoch - 1]["monitor"]["value"] == result.best_value
    if result.stopped_early:
        assert len(values) - result.best_epoch == 2


def test_best_weights_are_restored(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=5)
    result = trainer.fit(*data())
    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.evaluate(data()[1])["cls"]["accuracy"] == pytest.approx(result.best_value)


def test_bf16_autocast_on_cpu_trains() -> None:
    trainer = make_trainer(amp="bf16", epochs=2)
    result = trainer.fit(*data())
    assert all(
        torch.isfinite(torch.tensor(list(r["train"]["loss"].values()))).all()
        for r in result.history
    )
    with pytest.raises(ConfigError, match="fp16' is not supported on the CPU"):
        make_trainer(amp="fp16")


def test_predict_shapes() -> None:
    out = make_trainer(epochs=1).predict(data()[1])
    assert out["cls"].shape == (32, 3)
    assert out["reg"].shape == (32, 1)


def test_step_records_reach_the_log(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=1, log_every=2).fit(*data())
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [2, 4]
    assert steps[0]["weight/cls"] == 1.0 and "loss" in steps[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": "nope/accuracy"}, "unknown task 'nope'"),
        ({"monitor": "cls/mae"}, "has no metric 'mae'"),
        ({"epochs": 0}, "epochs must be ≥ 1"),
        ({"optimizer": "nope"}, "unknown optimizer 'nope'; available: adam"),
        ({"scheduler": "nope"}, "unknown scheduler 'nope'"),
        ({"optimizer_params": {"lrr": 1}}, "unknown option"),
    ],
)
def test_bad_trainer_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_trainer(**kwargs)


@pytest.mark.parametrize("weighting", ["ew", "uw", "upgrad", "pcgrad"])
def test_gradient_scaling_path_equals_unscaled(weighting: str) -> None:
    """The fp16 GradScaler path (CUDA in practice), driven here by a CPU scaler: a power-of-two
    loss scale is exact, so the run must equal the unscaled one."""
    plain = make_trainer(weighting=weighting, epochs=1)
    plain.fit(*data())
    scaled = make_trainer(weighting=weighting, epochs=1)
    scaled.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    scaled.fit(*data())
    assert scaled.precision.scaler.get_scale() == 2.0**10  # no inf/NaN step was skipped
    for key, value in params(plain).items():
        assert torch.allclose(value, params(scaled)[key], rtol=1e-5, atol=1e-7), key
