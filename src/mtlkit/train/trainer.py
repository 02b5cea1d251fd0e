"""The Trainer: fit, evaluate and predict a multi-task model.

:meth:`Trainer.train_step` is a sequence of named steps::

    outputs, targets, rep = self._forward(batch)        # under the precision's autocast
    losses = self._losses(outputs, targets)             # global over the ranks; None: no label
    values = self._check_finite(present)                # names the task and the step
    record = self._backward(losses, rep)                # the method, at the precision's scale
    self.precision.step(optimizer, parameters, grad_clip)  # unscale, clip, step
    self._log_step(values, record)

The Trainer never asks which weighting method it runs (everything a method needs travels
through the :class:`~mtlkit.weighting.Weighting` interface), nor whether it runs in one process
or many: its :class:`~mtlkit.train.strategy.Strategy` (``SingleProcess`` or ``DataParallel``)
and :class:`~mtlkit.train.precision.Precision` (fp32, bf16 autocast, fp16 with gradient
scaling) are chosen once, at construction. A task whose target holds no label
(:meth:`~mtlkit.tasks.Task.label_mask`) gets a ``None`` loss: the method runs on the present
tasks (:meth:`~mtlkit.weighting.Weighting.restrict`). Around it: ``batches.py`` (forward
and losses of joint and multi-input batches), ``evaluation.py`` (the evaluation loop),
``selection.py`` (model selection, early stopping), ``callbacks.py`` (the step and epoch
events every logger and the progress display receive), ``logging.py`` (the run folder and
its loggers), ``progress.py`` (the progress bar, or one line per epoch off a terminal).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.data.multi import TaskBatches
from mtlkit.errors import ConfigError, DatasetError, NonFiniteLossError
from mtlkit.nn.architectures.base import MTLModel
from mtlkit.tasks import Task, task_map
from mtlkit.train.batches import (
    Batch,
    Forward,
    check_step_mode,
    checked_losses,
    forward_batch,
    labelled_losses,
    resolve_device,
)
from mtlkit.train.callbacks import Callback, StepLog, as_callback, batch_size
from mtlkit.train.checkpoint import CheckpointError, load_checkpoint, load_weights, model_tensors
from mtlkit.train.evaluation import Evaluator
from mtlkit.train.logging import RunFolder
from mtlkit.train.optim import SCHEDULERS, build_optimizer
from mtlkit.train.precision import Precision
from mtlkit.train.progress import progress_for
from mtlkit.train.seed import rng_state, seed_everything, set_rng_state
from mtlkit.train.selection import Metrics, Monitor, Selection
from mtlkit.train.strategy import DataParallel, SingleProcess, Strategy
from mtlkit.weighting import EW, StepRecord, Weighting, for_tasks

__all__ = ["FitResult", "Trainer", "resolve_device"]


def regularizer(model: nn.Module) -> Callable[[], Any] | None:
    """The model's ``regularization()``, or None when it has none that can matter: an
    :class:`~mtlkit.nn.MTLModel` that keeps the default (an exact zero without a graph) is
    not asked every step for a new zero."""
    function = getattr(model, "regularization", None)
    if not callable(function):
        return None
    if getattr(type(model), "regularization", None) is MTLModel.regularization:
        return None
    return function  # type: ignore[no-any-return]


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: per-epoch history and the selected epoch."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float | None
    stopped_early: bool = False


class Trainer:
    """Fits a multi-task model with a loss-balancing method.

    Args:
        model: an :class:`~mtlkit.nn.MTLModel` (or any module returning dict task → output).
        tasks: the tasks, in order; their names are the model's output keys.
        weighting: a :class:`~mtlkit.weighting.Weighting` (equal weights by default).
        optimizer, optimizer_params: a registered optimiser name and its options (``lr``...).
        scheduler, scheduler_params: a registered scheduler, stepped once per epoch.
        epochs: the number of epochs to train for.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        monitor: what model selection watches on validation (see :class:`Monitor`).
        patience: stop after this many epochs without improvement (None: never).
        amp: mixed precision: ``False``, ``True`` (bf16 on CPU, fp16 with gradient scaling on
            CUDA), ``"bf16"`` or ``"fp16"``.
        device: ``"auto"``, or any torch device string.
        seed: seeds every random stream at construction and again when a fresh run starts in
            :meth:`fit` (None: leave them as they are).
        run_dir: where logs and checkpoints go (None: write nothing).
        log_every: write the step record (losses, the method's decisions, learning rate,
            throughput) to the loggers every this many steps.
        loggers: besides ``metrics.jsonl`` in ``run_dir``: ``"tensorboard"`` (written when
            the extra is installed), ``"wandb"``, ``"mlflow"`` (extras of the same names; see
            :mod:`mtlkit.train.logging`).
        check_inputs: check each batch's targets against its task (shapes, dtypes, labels).
        progress: show progress on standard error: a live bar on a terminal, one line per
            epoch otherwise (:mod:`mtlkit.train.progress`).
        callbacks: :class:`~mtlkit.train.callbacks.Callback` objects (step, epoch and fit
            events), or functions ``(trainer, epoch_record)`` called after each epoch.
        distributed: the process group (:func:`mtlkit.train.distributed.init_distributed`) for
            data-parallel training: give each rank its shard of the data
            (:class:`~mtlkit.data.sharding.ShardedLoader`); the weighting method then
            combines the global per-task gradients, evaluation gathers every rank's outputs,
            and rank 0 alone writes to ``run_dir`` (docs/distributed.md). It becomes the
            run's strategy (:class:`~mtlkit.train.strategy.DataParallel`); None runs in
            one process (:class:`~mtlkit.train.strategy.SingleProcess`).
        step_mode: for multi-input data, ``"single"`` (one task's batch per step) or
            ``"mixed"`` (every task's batch each step); None takes the training loader's
            ``step_mode``. Gradient-based methods need ``"mixed"`` (a ConfigError otherwise).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        weighting: Weighting | None = None,
        *,
        optimizer: str = "adam",
        optimizer_params: Mapping[str, Any] | None = None,
        scheduler: str = "none",
        scheduler_params: Mapping[str, Any] | None = None,
        epochs: int = 10,
        grad_clip: float | None = None,
        monitor: str = "loss",
        patience: int | None = None,
        amp: bool | str = False,
        device: str | torch.device = "auto",
        seed: int | None = 0,
        deterministic: bool = True,
        run_dir: str | Path | None = None,
        log_every: int = 10,
        loggers: Sequence[str] = ("tensorboard",),
        check_inputs: bool = True,
        progress: bool = True,
        callbacks: Sequence[Callback | Callable[[Trainer, dict[str, Any]], None]] = (),
        distributed: DataParallel | None = None,
        step_mode: str | None = None,
    ) -> None:
        self.seed, self.deterministic = seed, deterministic
        if seed is not None:
            seed_everything(seed, deterministic)
        self.tasks = task_map(tasks)
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        missing = [t for t in self.tasks if t not in getattr(model, "task_names", self.tasks)]
        if missing:
            raise ConfigError(f"the model has no head for task(s) {', '.join(missing)}")
        self.strategy: Strategy = distributed if distributed is not None else SingleProcess()
        self.strategy.broadcast_model(self.model)
        # the tasks' static weights go to the method, or are an error (never ignored)
        method = for_tasks(weighting if weighting is not None else EW(), self.tasks.values())
        self.weighting = self.strategy.wrap(method)
        self.weighting.bind(list(self.tasks))
        self.step_mode = step_mode
        check_step_mode(step_mode, self.weighting)
        for p in self.weighting.parameters():
            p.data = p.data.to(self.device)
        if epochs < 1:
            raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
        if grad_clip is not None and not grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0, got {grad_clip}")
        self.epochs = epochs
        self.grad_clip = grad_clip
        self.monitor = Monitor(monitor)
        self.monitor.check(self.tasks)
        self.selection = Selection(self.monitor, patience)
        self.log_every = max(1, int(log_every))
        self.check_inputs = check_inputs
        self.loggers = tuple(loggers)
        self.callbacks = [as_callback(c) for c in callbacks]
        #: set by a callback to end the fit after the current epoch
        self.stop = False
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        if self.weighting.parameters():
            groups.append({"params": self.weighting.parameters()})
        self.optimizer = build_optimizer(optimizer, groups, **dict(optimizer_params or {}))
        self.scheduler = SCHEDULERS.build(
            scheduler, self.optimizer, epochs, **dict(scheduler_params or {})
        )
        self.precision = Precision.from_amp(amp, self.device)
        self.evaluator = Evaluator(
            self.model, self.tasks, self.device, self.precision, self.strategy, check_inputs
        )
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.run = RunFolder(None)  # set by fit(); train_step works without it
        self.history: list[dict[str, Any]] = []
        self._listeners: list[Callback] = list(self.callbacks)  # fit() adds its loggers
        self._last_step = time.perf_counter()
        self._regularization = regularizer(self.model)

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: Batch | TaskBatches) -> dict[str, float]:
        """One optimisation step on a joint batch or a multi-input :class:`TaskBatches`;
        returns the loss of each task present (tasks without labels are absent)."""
        if not self.model.training:  # evaluation left it in eval mode (a walk of every module)
            self.model.train()
        outputs, targets, representation = self._forward(batch)
        losses = self._losses(outputs, targets, every_task=not isinstance(batch, TaskBatches))
        present = {t: loss for t, loss in losses.items() if loss is not None}
        if not present:  # no task has a label in this step (on any rank)
            return {}
        values = self._check_finite(present)
        record = self._backward(losses, representation)
        self.precision.step(self.optimizer, self.model.parameters(), self.grad_clip)
        self.step += 1
        self._log_step(values, record, batch_size(batch))
        return values

    def _forward(self, batch: Batch | TaskBatches) -> Forward:
        """Outputs, targets, and the shared representation when the method uses it."""
        with self.precision.autocast():
            return forward_batch(self.model, self.weighting, self.tasks, batch, self.device)

    def _losses(
        self, outputs: dict[str, Tensor], targets: dict[str, Tensor], every_task: bool
    ) -> Mapping[str, Tensor | None]:
        """Every task's loss over the global batch; None for a task with no label in it."""
        computed, known = checked_losses(
            self.tasks, outputs, targets, self.check_inputs, every_task=every_task
        )
        losses, counts = labelled_losses(self.tasks, computed, targets, known)
        # data-parallel: the global values, with this rank's share of the gradient
        return self.strategy.globalize(losses, counts)

    def _check_finite(self, losses: Mapping[str, Tensor]) -> dict[str, float]:
        """The losses' values; a NonFiniteLossError naming the first task with NaN or inf."""
        values = torch.stack([loss.detach().float() for loss in losses.values()]).tolist()
        for name, value in zip(losses, values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"task '{name}': loss is {value} at step {self.step + 1} "
                    f"(epoch {self.epoch + 1}); the last good checkpoint is kept"
                )
        return dict(zip(losses, values, strict=True))

    def _backward(
        self, losses: Mapping[str, Tensor | None], representation: Tensor | None
    ) -> StepRecord:
        """Fresh gradients, multiplied by the precision's loss scale: the model's own
        regulariser (if it has one), then the weighting method's combination of the losses."""
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.precision.loss_scale()
        if self._regularization is not None:
            extra = self._regularization()
            if isinstance(extra, Tensor) and extra.requires_grad:
                (self.strategy.share(extra) * scale).backward(retain_graph=True)
        return self.weighting.backward(
            losses, self.model, representation=representation, loss_scale=scale
        )

    def _log_step(self, losses: dict[str, float], record: StepRecord, samples: int) -> None:
        """The step's losses and what the method decided, to every callback."""
        now = time.perf_counter()
        step = StepLog(
            epoch=self.epoch + 1,
            step=self.step,
            losses=losses,
            record=record,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            samples=samples,
            seconds=now - self._last_step,
        )
        self._last_step = now
        for callback in self._listeners:
            callback.on_step_end(self, step)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None = None,
        *,
        resume: str | Path | None = None,
        stop_after: int | None = None,
    ) -> FitResult:
        """Train for the configured epochs (continuing a run folder's checkpoint if
        ``resume`` is given), selecting the best epoch on ``val``.

        ``stop_after`` ends this call after that epoch (the checkpoint lets a later call with
        ``resume`` continue exactly), for time-boxed jobs.
        """
        main = self.strategy.is_main
        if resume is not None:
            self.resume(resume)
        elif self.epoch == 0 and self.seed is not None:
            seed_everything(self.seed, self.deterministic)  # the run's random stream starts here
        config = {"weighting": repr(self.weighting), "epochs": self.epochs}
        self.run = RunFolder(self.run_dir if main else None, self.loggers, self.log_every, config)
        if resume is not None:
            self.run.truncate_after(self.epoch)
        shown = [progress_for()] if self.progress and main else []
        self._listeners = [*self.run.loggers, *shown, *self.callbacks]
        stopped = self.stop = False
        try:
            for callback in self._listeners:
                callback.on_fit_start(self)
            last = self.epochs if stop_after is None else min(self.epochs, stop_after)
            while self.epoch < last and not stopped:
                stopped = self._run_epoch(train, val)
            self.strategy.barrier()  # rank 0's checkpoint is on disk before any rank goes on
            best = self.selection
            if best.best_weights is not None:
                self.model.load_state_dict(best.best_weights)
            result = FitResult(self.history, best.best_epoch, best.best_value, stopped)
            for callback in self._listeners:
                callback.on_fit_end(self, result)
        finally:
            for callback in self._listeners:
                callback.close()
            self._listeners = list(self.callbacks)
        return result

    def _run_epoch(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None,
    ) -> bool:
        """One epoch, then its end: the method's and the scheduler's epoch step, validation
        and model selection, the logs, the checkpoint, the callbacks. True: stop early."""
        started = time.perf_counter()
        mean_losses = self._train_epoch(train)
        self.epoch += 1
        self.weighting.on_epoch_end(self.epoch, mean_losses)
        if self.scheduler is not None:
            self.scheduler.step()
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train": {"loss": mean_losses},
        }
        stop = False
        # whole tensors on every rank (a sharded strategy gathers them: every rank calls it)
        weights, optimizer_state = self.strategy.full_state(self.model, self.optimizer)
        if val is not None:
            results = self.evaluate(val)
            value = self.monitor.value(results, self.tasks)
            record["val"] = results
            record["monitor"] = {"name": self.monitor.spec, "value": value}
            best = self.selection.update(value, self.epoch, weights)
            if best is not None:
                self.run.save_best(best, self.epoch)
            stop = self.selection.should_stop
        else:
            self.selection.best_epoch = self.epoch
        record["time"] = time.perf_counter() - started
        self.history.append(record)
        # the run folder's logs, then the checkpoint (a resumed run truncates the logs to
        # it), then the others: a callback that interrupts leaves a complete checkpoint
        loggers = [c for c in self._listeners if c in self.run.loggers]
        for callback in loggers:
            callback.on_epoch_end(self, record)
        self.strategy.save_checkpoint(
            self.run, self.model, weights, lambda: self.state_dict(optimizer_state)
        )
        for callback in self._listeners:
            if callback not in loggers:
                callback.on_epoch_end(self, record)
        return stop or self.stop

    def _train_epoch(self, train: Iterable[Batch]) -> dict[str, float]:
        """The training steps of one epoch; each task's mean loss over the steps it was in."""
        totals = dict.fromkeys(self.tasks, 0.0)
        counts = dict.fromkeys(self.tasks, 0)  # steps in which each task was present
        batches = 0
        if self.step_mode is None:  # a multi-input loader says its mode
            check_step_mode(getattr(train, "step_mode", None), self.weighting)
        if hasattr(train, "set_epoch"):
            train.set_epoch(self.epoch)
        total = len(train) if hasattr(train, "__len__") else 0  # type: ignore[arg-type]
        for callback in self._listeners:
            callback.on_epoch_start(self, self.epoch + 1, total)
        self._last_step = time.perf_counter()
        for batch in train:
            losses = self.train_step(batch)
            for name, value in losses.items():
                totals[name] += value
                counts[name] += 1
            batches += 1
        if batches == 0:
            raise DatasetError("the training data yielded no batch: the train split is empty")
        # a task absent from the whole epoch keeps its previous mean (NaN in the first epoch)
        previous = self.history[-1]["train"]["loss"] if self.history else {}
        return {
            t: v / counts[t] if counts[t] else float(previous.get(t, math.nan))
            for t, v in totals.items()
        }

    # ------------------------------------------------------------------ evaluation

    def predict(self, data: Iterable[Batch]) -> dict[str, Tensor]:
        """Every task's outputs over ``data``, concatenated on the CPU."""
        return self.evaluator.predict(data)

    def evaluate(self, data: Iterable[Batch]) -> Metrics:
        """Each task's mean loss and metrics over ``data`` (:mod:`mtlkit.train.evaluation`)."""
        return self.evaluator.evaluate(data)

    # ------------------------------------------------------------------ state

    def state_dict(self, optimizer_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything but the model weights that a resumed run needs (``optimizer_state``:
        the strategy's :meth:`~mtlkit.train.strategy.Strategy.full_state` of the optimiser)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": optimizer_state
            if optimizer_state is not None
            else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.precision.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weighting_parameters": [p.detach() for p in self.weighting.parameters()],
            "rng": rng_state(),
            "best": self.selection.state_dict(),
            "history": self.history,
        }

    def resume(self, run_dir: str | Path) -> None:
        """Restore model, optimiser, scheduler, method state and RNG from ``run_dir``.

        Every file is checked before it is applied: a damaged checkpoint falls back to the
        previous one (``checkpoint.prev``) with a warning, and the error names the file when
        none is usable (:mod:`mtlkit.train.checkpoint`).
        """
        run_dir = Path(run_dir)
        state = load_checkpoint(run_dir / "checkpoint", self.model)
        best_weights = None
        best_file = run_dir / "best" / "model.safetensors"
        if best_file.exists():
            try:
                best_weights = load_weights(best_file)
            except CheckpointError:
                if int(state["best"]["epoch"]) != int(state["epoch"]):
                    raise
                best_weights = model_tensors(self.model)  # the checkpoint's are the best
        self.strategy.load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self.weighting.load_state_dict(state["weighting"])
        for p, saved in zip(
            self.weighting.parameters(), state["weighting_parameters"], strict=True
        ):
            p.data.copy_(saved)
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.selection.load_state_dict(state["best"])
        self.history = list(state["history"])
        if best_weights is not None:
            self.selection.best_weights = best_weights
