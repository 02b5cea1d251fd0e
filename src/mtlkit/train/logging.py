"""Where training reports go: a JSONL file, TensorBoard (when installed), a progress bar, and
the run folder that holds them with the selected weights and the checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from mtlkit.files import atomic_write_text
from mtlkit.train.checkpoint import save_checkpoint, save_weights
from mtlkit.train.runfiles import read_metrics


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN and inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class JsonlLogger:
    """Appends one JSON object per line to ``metrics.jsonl`` in the run folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(dict(record))) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class TensorBoardLogger:
    """Scalars to TensorBoard; a no-op when the ``tensorboard`` extra is not installed."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional extra: mtlkit[tensorboard]
            self.writer = None
        else:
            self.writer = SummaryWriter(str(folder))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flatten(prefix: str, nested: Mapping[str, Any]) -> dict[str, float]:
    """``{"a": {"b": 1}}`` → ``{"prefix/a/b": 1}``."""
    out: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(name, value))
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


class ProgressBar:
    """A rich progress bar with per-task losses; silent when output is not a terminal."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        self.progress: Progress | None = None
        if enabled and console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[losses]}"),
                console=console,
                transient=False,
            )
        self.task_id: Any = None

    def start_epoch(self, description: str, total: int) -> None:
        if self.progress is None:
            return
        if self.task_id is None:
            self.progress.start()
            self.task_id = self.progress.add_task(description, total=total, losses="")
        else:
            self.progress.reset(self.task_id, total=total, description=description)

    def update(self, losses: Mapping[str, float]) -> None:
        if self.progress is None or self.task_id is None:
            return
        text = " ".join(f"{t}={v:.3f}" for t, v in losses.items())
        self.progress.update(self.task_id, advance=1, losses=text)

    def close(self) -> None:
        if self.progress is not None and self.task_id is not None:
            self.progress.stop()


class RunFolder:
    """What a run writes to its folder: ``metrics.jsonl``, ``tensorboard/``, ``best/`` (the
    selected weights) and ``checkpoint/``. ``folder=None`` (no run folder, or a rank other
    than 0) writes nothing."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.jsonl = JsonlLogger(folder / "metrics.jsonl") if folder is not None else None
        self.board = TensorBoardLogger(folder / "tensorboard") if folder is not None else None

    @property
    def writes(self) -> bool:
        return self.folder is not None

    def log(self, record: Mapping[str, Any]) -> None:
        """One record (a step's or an epoch's) in ``metrics.jsonl``."""
        if self.jsonl is not None:
            self.jsonl.log(record)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """An epoch's record in ``metrics.jsonl``, its losses and metrics in TensorBoard."""
        self.log(record)
        if self.board is not None:
            scalars = {k: record[k] for k in ("train", "val") if k in record}
            self.board.log(flatten("", scalars), record["epoch"])

    def truncate_after(self, epoch: int) -> None:
        """Drop the records of epochs after ``epoch`` (a resumed run writes them again)."""
        if self.jsonl is not None:
            self.jsonl.truncate_after(epoch)

    def save_best(self, weights: Mapping[str, Tensor], epoch: int | None = None) -> None:
        """The selected model's weights, in ``best/model.safetensors`` (written atomically,
        with their checksum and epoch)."""
        if self.folder is not None:
            (self.folder / "best").mkdir(parents=True, exist_ok=True)
            save_weights(self.folder / "best" / "model.safetensors", weights, epoch)

    def save_checkpoint(self, model: nn.Module, state: Callable[[], dict[str, Any]]) -> None:
        """The model and ``state()`` (called only when writing) in ``checkpoint/``."""
        if self.folder is not None:
            save_checkpoint(self.folder / "checkpoint", model, state())

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
