"""What a person watching training sees: a live bar on a terminal, one line per epoch otherwise.

On a terminal (:class:`ProgressBar`): one Rich bar over every step of the fit with the epoch,
its step, the elapsed time and the ETA of the whole fit, each task's running mean loss this
epoch, the method's latest task weights and the latest validation metrics; after each epoch a
summary line stays above the bar. Elsewhere (a pipe, a log file, CI; :class:`PlainProgress`):
one plain line when training starts and one per epoch, flushed at once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mtlkit.train.callbacks import Callback, StepLog

if TYPE_CHECKING:
    from mtlkit.train.trainer import FitResult, Trainer


def _numbers(values: Mapping[str, float], digits: int = 3) -> str:
    return " ".join(f"{k}={v:.{digits}g}" for k, v in values.items())


def validation_text(record: Mapping[str, Any], limit: int = 4) -> str:
    """The validation metrics of an epoch record, ``task/metric=value``, at most ``limit``
    (the monitored value first)."""
    parts = []
    monitor = record.get("monitor") or {}
    if isinstance(monitor.get("value"), int | float):
        parts.append(f"{monitor['name']}={monitor['value']:.4g}")
    for task, metrics in (record.get("val") or {}).items():
        for name, value in metrics.items():
            shown = f"{task}/{name}" == monitor.get("name")  # already first
            if name != "loss" and not shown and isinstance(value, int | float):
                parts.append(f"{task}/{name}={value:.4g}")
    shown = parts[:limit]
    if len(parts) > limit:
        shown.append(f"(+{len(parts) - limit})")
    return " ".join(shown)


def epoch_line(trainer: Trainer, record: Mapping[str, Any]) -> str:
    """One epoch's summary: training losses, validation metrics, time, and whether it was
    selected as the best so far."""
    losses = _numbers(record.get("train", {}).get("loss", {}))
    text = f"epoch {record['epoch']}/{trainer.epochs}  loss {losses}"
    val = validation_text(record)
    if val:
        text += f"  val {val}"
    text += f"  {record.get('time', 0.0):.1f}s"
    if record.get("val") is not None and trainer.selection.best_epoch == record["epoch"]:
        text += "  (best)"
    return text


def start_line(trainer: Trainer, steps: int) -> str:
    """What starts: epochs, steps per epoch, method, device."""
    per_epoch = f"{steps} steps/epoch" if steps else "steps/epoch unknown"
    first = trainer.epoch + 1
    span = f"epochs {first}-{trainer.epochs}" if first > 1 else f"{trainer.epochs} epoch(s)"
    return (
        f"training {span}, {per_epoch}, {len(trainer.tasks)} task(s), "
        f"method {trainer.weighting}, device {trainer.device}"
    )


class _Running:
    """Each task's mean loss over this epoch's steps so far."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, losses: Mapping[str, float]) -> dict[str, float]:
        for task, value in losses.items():
            self.totals[task] = self.totals.get(task, 0.0) + value
            self.counts[task] = self.counts.get(task, 0) + 1
        return {t: self.totals[t] / self.counts[t] for t in self.totals}


class ProgressBar(Callback):
    """A Rich progress bar (see the module docstring); use :func:`progress_for` to pick it or
    the plain lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self.task_id: Any = None
        self.running = _Running()
        self.steps = 0
        self.step_in_epoch = 0
        self.weights = ""
        self.val = ""

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        self.running, self.steps, self.step_in_epoch = _Running(), steps, 0
        if self.task_id is None:
            self.console.print(start_line(trainer, steps), highlight=False, markup=False)
            total = steps * (trainer.epochs - epoch + 1) if steps else None
            self.progress.start()
            self.task_id = self.progress.add_task("", total=total, status="")
        self._refresh(trainer, epoch, {})

    def on_step_end(self, trainer: Trainer, step: StepLog) -> None:
        self.step_in_epoch += 1
        means = self.running.add(step.losses)
        self.weights = _numbers(step.record.weights, 2)
        self.progress.advance(self.task_id)
        self._refresh(trainer, step.epoch, means)

    def _refresh(self, trainer: Trainer, epoch: int, means: Mapping[str, float]) -> None:
        of = f"/{self.steps}" if self.steps else ""
        status = f"loss {_numbers(means)}" if means else ""
        if self.weights:
            status += f" | w {self.weights}"
        if self.val:
            status += f" | val {self.val}"
        self.progress.update(
            self.task_id,
            description=f"epoch {epoch}/{trainer.epochs} step {self.step_in_epoch}{of}",
            status=escape(status),
        )

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.val = validation_text(record, limit=2)
        self.progress.console.print(epoch_line(trainer, record), highlight=False, markup=False)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self.close()

    def close(self) -> None:
        if self.task_id is not None:
            self.progress.stop()
            self.task_id = None


class PlainProgress(Callback):
    """One line when training starts and one per epoch, for output that is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.started = False

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        if not self.started:
            self.started = True
            self._print(start_line(trainer, steps))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._print(epoch_line(trainer, record))


def progress_for(console: Console | None = None) -> Callback:
    """The live bar when ``console`` (default: standard error) is a terminal, else plain lines
    written to it."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        return ProgressBar(console)
    return PlainProgress(console.file)
