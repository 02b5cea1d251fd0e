"""Where training reports go: the run folder's ``metrics.jsonl``, TensorBoard, Weights & Biases
and MLflow, each a :class:`~mtlkit.train.callbacks.Callback`; and the run folder that holds
them with the selected weights and the checkpoint.

What each logger receives (``log_every``: every this many steps; the epoch's record after
each epoch):

- ``metrics.jsonl`` (always, in the run folder): ``type: step`` records (losses, the
  method's ``weight/<task>``, ``grad_norm/<task>``, ``cosine/<a>/<b>``, ``lr``, throughput)
  and ``type: epoch`` records (training losses, validation metrics, the monitored value);
- TensorBoard (``tensorboard/``, when the ``tensorboard`` extra is installed; silent
  otherwise): the step scalars under ``step/`` against the global step
  (``step/loss/<task>``, ``step/weight/<task>``, ``step/grad_norm/<task>``,
  ``step/cosine/<a>/<b>``, ``step/lr``, ``step/samples_per_second``), and the epoch scalars
  ``train/loss/<task>``, ``val/<task>/<metric>`` against the epoch;
- Weights & Biases (``loggers: [wandb]``, extra ``wandb``): the same scalars; project from
  ``WANDB_PROJECT`` (default ``mtlkit``), mode from ``WANDB_MODE`` (``offline`` writes only
  to ``RUN_DIR/wandb``); the run is named after the run folder;
- MLflow (``loggers: [mlflow]``, extra ``mlflow``): the same scalars (epoch scalars against
  the epoch); tracking URI from ``MLFLOW_TRACKING_URI``, else a file store in
  ``RUN_DIR/mlruns`` (setting ``MLFLOW_ALLOW_FILE_STORE=true``, which recent MLflow asks
  for); experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``mtlkit``).
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from mtlkit.errors import ConfigError, require
from mtlkit.files import atomic_write_text
from mtlkit.train.callbacks import Callback, StepLog
from mtlkit.train.checkpoint import save_checkpoint, save_weights
from mtlkit.train.runfiles import read_metrics

if TYPE_CHECKING:
    from mtlkit.train.trainer import Trainer

#: the loggers a config's ``train.loggers`` can name (metrics.jsonl is always written)
LOGGERS = ("tensorboard", "wandb", "mlflow")


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN and inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class JsonlLogger(Callback):
    """Appends one JSON object per line to ``metrics.jsonl`` in the run folder: a ``type: step``
    record every ``log_every`` steps, a ``type: epoch`` record after each epoch."""

    def __init__(self, path: Path, log_every: int = 10) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_every = max(1, int(log_every))

    def log(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(dict(record))) + "\n")

    def on_step_end(self, trainer: Trainer, step: StepLog) -> None:
        if step.step % self.log_every == 0:
            record = {"type": "step", "epoch": step.epoch, "step": step.step}
            scalars = step.scalars()
            extra = {k: v for k, v in scalars.items() if not k.startswith("loss/")}
            self.log({**record, "loss": dict(step.losses), **extra})

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.log(record)

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class _Interval:
    """Throughput over the steps since the last write (one step is too noisy)."""

    def __init__(self) -> None:
        self.samples, self.seconds, self.steps = 0, 0.0, 0

    def add(self, step: StepLog) -> None:
        self.samples += step.samples
        self.seconds += step.seconds
        self.steps += 1

    def scalars(self, step: StepLog) -> dict[str, float]:
        out = {k: v for k, v in step.scalars().items() if not k.endswith("_per_second")}
        if self.seconds > 0:
            out["steps_per_second"] = self.steps / self.seconds
            if self.samples:
                out["samples_per_second"] = self.samples / self.seconds
        self.samples, self.seconds, self.steps = 0, 0.0, 0
        return out


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch record's ``train/loss/<task>``, ``val/<task>/<metric>`` and ``monitor``."""
    scalars = flatten("", {k: record[k] for k in ("train", "val") if k in record})
    value = record.get("monitor", {}).get("value")
    if isinstance(value, int | float):
        scalars["monitor"] = float(value)
    return {k: v for k, v in scalars.items() if math.isfinite(v)}


class _ScalarLogger(Callback, ABC):
    """Step scalars every ``log_every`` steps (with the throughput over the interval) and
    epoch scalars after each epoch, to :meth:`write`."""

    def __init__(self, log_every: int) -> None:
        self.log_every = max(1, int(log_every))
        self.interval = _Interval()

    @abstractmethod
    def write(self, scalars: Mapping[str, float], step: int, *, epoch: bool) -> None:
        """Send ``scalars`` at ``step`` to the tracker (``epoch``: an epoch record)."""

    def on_step_end(self, trainer: Trainer, step: StepLog) -> None:
        self.interval.add(step)
        if step.step % self.log_every == 0:
            scalars = self.interval.scalars(step)
            finite = {k: v for k, v in scalars.items() if math.isfinite(v)}
            self.write(finite, step.step, epoch=False)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.write(epoch_scalars(record), int(record["epoch"]), epoch=True)


class TensorBoardLogger(_ScalarLogger):
    """Scalars to TensorBoard (see the module docstring); a no-op when the ``tensorboard``
    extra is not installed."""

    def __init__(self, folder: Path, log_every: int = 10) -> None:
        super().__init__(log_every)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional extra: mtlkit[tensorboard]
            self.writer = None
        else:
            self.writer = SummaryWriter(str(folder))

    def write(self, scalars: Mapping[str, float], step: int, *, epoch: bool) -> None:
        if self.writer is None:
            return
        for key, value in scalars.items():
            self.writer.add_scalar(key if epoch else f"step/{key}", value, step)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Any scalars against ``step`` (non-finite values are left out)."""
        self.write({k: v for k, v in scalars.items() if math.isfinite(v)}, step, epoch=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(_ScalarLogger):
    """Scalars to Weights & Biases (extra ``wandb``; see the module docstring). Epoch scalars
    go to the step at which the epoch ended, with ``epoch`` beside them."""

    def __init__(self, folder: Path, log_every: int = 10, config: Mapping[str, Any] | None = None):
        super().__init__(log_every)
        wandb = require("wandb", "wandb", "the Weights & Biases logger")
        folder.mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "mtlkit"),
            name=folder.name,
            dir=str(folder),
            config=dict(config or {}),
            reinit=True,
        )

    def write(self, scalars: Mapping[str, float], step: int, *, epoch: bool) -> None:
        if self.run is not None:  # epochs: on_epoch_end (the run's x-axis is the step)
            self.run.log({f"step/{k}": v for k, v in scalars.items()}, step=step)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.run is not None:
            values = {**epoch_scalars(record), "epoch": float(record["epoch"])}
            self.run.log(values, step=int(record["step"]), commit=True)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MlflowLogger(_ScalarLogger):
    """Scalars to MLflow (extra ``mlflow``; see the module docstring)."""

    def __init__(self, folder: Path, log_every: int = 10, config: Mapping[str, Any] | None = None):
        super().__init__(log_every)
        self.mlflow: Any = require("mlflow", "mlflow", "the MLflow logger")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store in the run folder: no server, no database
            uri = (folder / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow ≥ 3.7 asks it
        self.client = self.mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mtlkit")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id: str | None = self.client.create_run(
            experiment, run_name=folder.name
        ).info.run_id
        for key, value in (config or {}).items():
            self.client.log_param(self.run_id, key, str(value))

    def write(self, scalars: Mapping[str, float], step: int, *, epoch: bool) -> None:
        if self.run_id is None:
            return
        Metric = self.mlflow.entities.Metric
        stamp = int(time.time() * 1000)
        prefix = "" if epoch else "step/"
        metrics = [Metric(prefix + k, v, stamp, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.run_id = None


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


class RunFolder:
    """What a run writes to its folder: ``metrics.jsonl``, the loggers' folders
    (``tensorboard/``, ``wandb/``, ``mlruns/``), ``best/`` (the selected weights) and
    ``checkpoint/``. ``folder=None`` (no run folder, or a rank other than 0) writes nothing."""

    def __init__(
        self,
        folder: Path | None,
        loggers: Sequence[str] = ("tensorboard",),
        log_every: int = 10,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = sorted(set(loggers) - set(LOGGERS))
        if unknown:
            raise ConfigError(
                f"unknown logger(s) {', '.join(unknown)}; available: {', '.join(LOGGERS)}"
            )
        self.folder = folder
        self.jsonl = JsonlLogger(folder / "metrics.jsonl", log_every) if folder else None
        self.loggers: list[Callback] = []
        if folder is None:
            return
        self.loggers.append(self.jsonl)  # type: ignore[arg-type]
        try:
            for name in dict.fromkeys(loggers):
                if name == "tensorboard":
                    self.loggers.append(TensorBoardLogger(folder / "tensorboard", log_every))
                elif name == "wandb":
                    self.loggers.append(WandbLogger(folder, log_every, config))
                elif name == "mlflow":
                    self.loggers.append(MlflowLogger(folder, log_every, config))
        except BaseException:
            self.close()
            raise

    @property
    def writes(self) -> bool:
        return self.folder is not None

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
        for logger in self.loggers:
            logger.close()
