"""Callbacks and loggers: the events and their order, what each logger receives (TensorBoard
through a stand-in writer; W&B in offline mode; MLflow to a file store), progress output."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console

from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.train.callbacks import Callback, StepLog, batch_size
from mtlkit.train.logging import RunFolder, TensorBoardLogger, flatten
from mtlkit.train.progress import PlainProgress, ProgressBar, progress_for
from tests.train._trainer import data, make_trainer


class FakeWriter:
    instances: ClassVar[list[FakeWriter]] = []

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.scalars: list[tuple[str, float, int]] = []
        FakeWriter.instances.append(self)

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.append((key, value, step))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch: pytest.MonkeyPatch) -> list[FakeWriter]:
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.instances.clear()
    return FakeWriter.instances


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_fit_start(self, trainer: Any) -> None:
        self.events.append(("fit_start", trainer.epoch))

    def on_epoch_start(self, trainer: Any, epoch: int, steps: int) -> None:
        self.events.append(("epoch_start", (epoch, steps)))

    def on_step_end(self, trainer: Any, step: StepLog) -> None:
        self.events.append(("step", step))

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.events.append(("epoch_end", record["epoch"]))

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        self.events.append(("fit_end", result.best_epoch))

    def close(self) -> None:
        self.events.append(("close", None))


def test_events_arrive_in_order_with_every_step(tmp_path: Path) -> None:
    recorder = Recorder()
    make_trainer(tmp_path, "pcgrad", epochs=2, callbacks=[recorder]).fit(*data())
    kinds = [k for k, _ in recorder.events]
    # 64 samples in batches of 16: 4 steps per epoch
    epoch = ["epoch_start", *["step"] * 4, "epoch_end"]
    assert kinds == ["fit_start", *epoch, *epoch, "fit_end", "close"]
    assert recorder.events[1] == ("epoch_start", (1, 4))
    steps = [s for k, s in recorder.events if k == "step"]
    assert [s.step for s in steps] == list(range(1, 9))
    assert [s.epoch for s in steps] == [1] * 4 + [2] * 4
    first = steps[0]
    assert set(first.losses) == {"cls", "reg"} and first.samples == 16 and first.seconds > 0
    assert first.lr == pytest.approx(0.01)
    scalars = first.scalars()  # a gradient method: weights, norms and the cosine
    assert {"loss/cls", "weight/cls", "grad_norm/reg", "cosine/cls/reg", "lr"} <= set(scalars)
    assert scalars["samples_per_second"] == pytest.approx(16 / first.seconds)


def test_a_plain_function_is_an_epoch_callback_and_a_callback_can_stop(tmp_path: Path) -> None:
    seen: list[int] = []

    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
            trainer.stop = record["epoch"] == 2

    trainer = make_trainer(
        tmp_path, epochs=5, callbacks=[lambda t, r: seen.append(r["epoch"]), StopAfterTwo()]
    )
    result = trainer.fit(*data())
    assert seen == [1, 2] and len(result.history) == 2 and result.stopped_early


def test_jsonl_gets_step_records_with_lr_and_throughput(tmp_path: Path) -> None:
    make_trainer(tmp_path, "mgda", epochs=2, log_every=3).fit(*data())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["type"] == "step"]
    assert [r["step"] for r in steps] == [3, 6]
    assert {"loss", "weight/cls", "grad_norm/cls", "cosine/cls/reg", "lr"} <= set(steps[0])
    assert steps[0]["samples_per_second"] > 0
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [1, 2]


def test_tensorboard_gets_step_and_epoch_scalars(
    tmp_path: Path, fake_tensorboard: list[FakeWriter]
) -> None:
    make_trainer(tmp_path, "pcgrad", epochs=2, log_every=2).fit(*data())
    (writer,) = fake_tensorboard
    assert writer.folder == str(tmp_path / "tensorboard") and writer.closed
    keys = {(k, step) for k, _, step in writer.scalars}
    assert ("train/loss/cls", 1) in keys and ("val/cls/accuracy", 2) in keys
    for key in ("loss/cls", "weight/reg", "grad_norm/cls", "cosine/cls/reg", "lr"):
        assert {(f"step/{key}", 2), (f"step/{key}", 8)} <= keys, key
    assert ("step/samples_per_second", 4) in keys
    assert not any(k.startswith("step/") and s % 2 for k, s in keys)  # every log_every steps


def test_without_tensorboard_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logger = TensorBoardLogger(Path("/nonexistent"))
    assert logger.writer is None
    logger.log({"a": 1.0}, 1)
    logger.close()


def test_unknown_logger_and_missing_extras_name_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"unknown logger.*available: tensorboard, wandb"):
        RunFolder(tmp_path, ["neptune"])
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'mtlkit\[wandb\]'"):
        RunFolder(tmp_path, ["wandb"])
    with pytest.raises(MissingExtraError, match=r"pip install 'mtlkit\[mlflow\]'"):
        RunFolder(tmp_path, ["mlflow"])


def test_wandb_offline_run_holds_the_step_and_epoch_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="extra wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    trainer = make_trainer(tmp_path / "run", "pcgrad", epochs=2, log_every=4, loggers=["wandb"])
    summary: dict[str, Any] = {}

    class Peek(Callback):  # the run's summary holds the last value of each key
        def on_fit_end(self, trainer: Any, result: Any) -> None:
            (logger,) = [c for c in trainer.run.loggers if type(c).__name__ == "WandbLogger"]
            summary.update(dict(logger.run.summary))

    trainer.callbacks.append(Peek())
    trainer.fit(*data())
    files = list((tmp_path / "run" / "wandb").rglob("*.wandb"))
    assert files, "no offline run file"
    assert summary["epoch"] == 2 and "val/cls/accuracy" in summary
    assert {"step/weight/cls", "step/cosine/cls/reg", "step/lr"} <= set(summary)


def test_mlflow_file_store_holds_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow", reason="extra mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored afterwards
    make_trainer(tmp_path, "mgda", epochs=2, log_every=4, loggers=["mlflow"]).fit(*data())
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("mtlkit").experiment_id])
    assert run.info.run_name == tmp_path.name and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "step/weight/cls")
    assert sorted(m.step for m in history) == [4, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/cls/accuracy")] == [
        1,
        2,
    ]
    assert "step/cosine/cls/reg" in run.data.metrics and run.data.params["epochs"] == "2"


def test_plain_progress_prints_a_start_line_and_one_line_per_epoch(tmp_path: Path) -> None:
    out = io.StringIO()
    make_trainer(tmp_path, epochs=3, callbacks=[PlainProgress(out)]).fit(*data())
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("training 3 epoch(s), 4 steps/epoch, 2 task(s), method EW")
    assert lines[1].startswith("epoch 1/3  loss cls=") and "val cls/accuracy=" in lines[1]
    assert lines[1].count("cls/accuracy=") == 1  # the monitored metric, shown once
    assert lines[3].startswith("epoch 3/3")


def test_progress_is_plain_off_a_terminal_and_a_bar_on_one(tmp_path: Path) -> None:
    assert isinstance(progress_for(Console(file=io.StringIO())), PlainProgress)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    bar = progress_for(console)
    assert isinstance(bar, ProgressBar)
    make_trainer(tmp_path, "pcgrad", epochs=2, callbacks=[bar]).fit(*data())
    text = screen.getvalue()
    assert "training 2 epoch(s)" in text
    assert "eta" in text and "w cls=" in text  # ETA and the method's weights in the bar
    assert "epoch 1/2  loss" in text and "epoch 2/2  loss" in text  # one kept line per epoch
    assert "val cls/accuracy=" in text


def test_batch_size_finds_the_leading_dimension() -> None:
    import torch

    x = torch.zeros(5, 3)
    assert batch_size((x, {"a": x})) == 5
    assert batch_size(({"ids": torch.zeros(7, 2, dtype=torch.long)}, {})) == 7
    assert batch_size({"a": (x, {}), "b": (torch.zeros(2, 1), {})}) == 7
    assert batch_size(("text", {})) == 0


def test_flatten() -> None:
    assert flatten("", {"a": {"b": 1, "c": {"d": 2.5}}, "e": "text"}) == {"a/b": 1.0, "a/c/d": 2.5}
