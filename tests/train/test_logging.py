"""Logging: TensorBoard when it is installed (a stand-in writer here), silent progress bars."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from mtlkit.train.logging import ProgressBar, TensorBoardLogger, flatten
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


def test_tensorboard_gets_epoch_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.instances.clear()
    make_trainer(tmp_path, epochs=2).fit(*data())
    (writer,) = FakeWriter.instances
    assert writer.folder == str(tmp_path / "tensorboard") and writer.closed
    keys = {(k, step) for k, _, step in writer.scalars}
    assert ("train/loss/cls", 1) in keys and ("val/cls/accuracy", 2) in keys


def test_without_tensorboard_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logger = TensorBoardLogger(Path("/nonexistent"))
    assert logger.writer is None
    logger.log({"a": 1.0}, 1)
    logger.close()


def test_progress_bar_is_off_when_not_a_terminal() -> None:
    bar = ProgressBar(enabled=True, console=Console(file=io.StringIO()))
    assert bar.progress is None
    bar.start_epoch("epoch 1", 3)
    bar.update({"a": 1.0})
    bar.close()


def test_flatten() -> None:
    assert flatten("", {"a": {"b": 1, "c": {"d": 2.5}}, "e": "text"}) == {"a/b": 1.0, "a/c/d": 2.5}
