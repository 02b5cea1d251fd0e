"""The Trainer: fit, evaluate and predict a multi-task model on joint batches.

Each batch is ``(inputs, targets)`` with a target for every task. A training step is::

    outputs = model(inputs)                       # dict task → output (under autocast)
    losses  = {t: task.loss(outputs[t], targets[t])}
    record  = weighting.backward(losses, model)   # the only place losses meet
    optimizer.step()

The Trainer never asks which weighting method it runs: everything a method needs travels
through the :class:`~mtlkit.weighting.Weighting` interface.

Multi-input batches (:class:`~mtlkit.data.multi.TaskBatches`, one dataset per task) carry
each task's own inputs: each task's inputs are forwarded (in one pass when they stack into
one batch) and only the tasks present get a loss. A task whose batch has no label at all (every
target the ignore value -100, or NaN) is absent too: its loss is ``None`` for the weighting
method, so it adds no loss and no gradient (:meth:`~mtlkit.weighting.Weighting.restrict`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mtlkit.data.multi import STEP_MODES, TaskBatches
from mtlkit.errors import ConfigError, DatasetError, NonFiniteLossError, TaskDataError
from mtlkit.metrics import better, get_metric
from mtlkit.tasks import Task, task_map
from mtlkit.train.checkpoint import load_checkpoint, model_tensors, save_checkpoint
from mtlkit.train.distributed import Distributed
from mtlkit.train.logging import JsonlLogger, ProgressBar, TensorBoardLogger, flatten
from mtlkit.train.optim import SCHEDULERS, build_optimizer
from mtlkit.train.seed import rng_state, seed_everything, set_rng_state
from mtlkit.weighting import EW, Weighting

Batch = tuple[Any, Mapping[str, Tensor]]
Metrics = dict[str, dict[str, float]]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside dicts, lists and tuples to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@dataclass
class Monitor:
    """What model selection and early stopping watch on the validation split.

    ``loss`` (sum of task losses, lower is better), ``<task>/<metric>``, or ``mean/<metric>``
    (the mean over non-auxiliary tasks that report the metric).
    """

    spec: str
    direction: str = field(init=False)

    def __post_init__(self) -> None:
        if self.spec == "loss":
            self.direction = "min"
            return
        _, _, metric = self.spec.partition("/")
        if not metric:
            raise ConfigError(
                f"monitor '{self.spec}': use 'loss', '<task>/<metric>' or 'mean/<metric>'"
            )
        self.direction = get_metric(metric).direction

    def check(self, tasks: Mapping[str, Task]) -> None:
        """Raise when the monitor names a task or metric the run does not have."""
        if self.spec == "loss":
            return
        scope, _, metric = self.spec.partition("/")
        if scope == "mean":
            if not any(metric in t.metrics and not t.auxiliary for t in tasks.values()):
                raise ConfigError(f"monitor '{self.spec}': no main task reports '{metric}'")
        elif scope not in tasks:
            raise ConfigError(
                f"monitor '{self.spec}': unknown task '{scope}'; tasks: {', '.join(tasks)}"
            )
        elif metric not in tasks[scope].metrics:
            raise ConfigError(
                f"monitor '{self.spec}': task '{scope}' has no metric '{metric}' "
                f"(its metrics: {', '.join(tasks[scope].metrics)})"
            )

    def value(self, results: Metrics, tasks: Mapping[str, Task]) -> float:
        """The watched value in evaluation ``results``."""
        if self.spec == "loss":
            return float(sum(r["loss"] for t, r in results.items() if not tasks[t].auxiliary))
        scope, _, metric = self.spec.partition("/")
        if scope == "mean":
            values = [
                r[metric] for t, r in results.items() if metric in r and not tasks[t].auxiliary
            ]
            return float(sum(values) / len(values))
        return float(results[scope][metric])


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
        log_every: write the weighting method's record every this many steps.
        check_inputs: check each batch's targets against its task (shapes, dtypes, labels).
        progress: show a progress bar when writing to a terminal.
        callbacks: functions ``(trainer, epoch_record)`` called after each epoch.
        distributed: the process group (:func:`mtlkit.train.distributed.init_distributed`) for
            data-parallel training: give each rank its shard of the data
            (:class:`~mtlkit.train.distributed.ShardedLoader`); the weighting method then
            combines the global per-task gradients, evaluation gathers every rank's outputs,
            and rank 0 alone writes to ``run_dir`` (docs/distributed.md).
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
        check_inputs: bool = True,
        progress: bool = True,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
        distributed: Distributed | None = None,
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
        self.weighting = weighting if weighting is not None else EW()
        self.distributed = distributed
        self.writes = distributed is None or distributed.is_main  # rank 0 writes run_dir files
        if distributed is not None:
            distributed.broadcast_model(self.model)
            self.weighting = distributed.wrap(self.weighting)
        self.weighting.bind(list(self.tasks))
        self.step_mode = step_mode
        self.check_step_mode(step_mode)
        for p in self.weighting.parameters():
            p.data = p.data.to(self.device)
        if epochs < 1:
            raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
        if grad_clip is not None and not grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0, got {grad_clip}")
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be ≥ 1, got {patience}")
        self.epochs = epochs
        self.grad_clip = grad_clip
        self.patience = patience
        self.monitor = Monitor(monitor)
        self.monitor.check(self.tasks)
        self.log_every = max(1, int(log_every))
        self.check_inputs = check_inputs
        self.callbacks = list(callbacks)
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        if self.weighting.parameters():
            groups.append({"params": self.weighting.parameters()})
        self.optimizer = build_optimizer(optimizer, groups, **dict(optimizer_params or {}))
        self.scheduler = SCHEDULERS.build(
            scheduler, self.optimizer, epochs, **dict(scheduler_params or {})
        )
        self.amp_dtype, self.scaler = self._amp(amp)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.logger: JsonlLogger | None = None  # set by fit(); train_step works without it
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, Tensor] | None = None
        self.bad_epochs = 0

    # ------------------------------------------------------------------ set-up helpers

    def _amp(self, amp: bool | str) -> tuple[torch.dtype | None, Any]:
        if amp in (False, None, "none", "off"):
            return None, None
        kind = self.device.type
        choice = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(amp))
        if amp is True or amp == "auto":
            choice = torch.bfloat16 if kind == "cpu" else torch.float16
        if choice is None:
            raise ConfigError(f"amp must be false, true, 'bf16' or 'fp16', got {amp!r}")
        if choice == torch.float16 and kind == "cpu":
            raise ConfigError("amp 'fp16' is not supported on the CPU; use 'bf16'")
        scaler = (
            torch.amp.GradScaler(kind) if (choice == torch.float16 and kind == "cuda") else None
        )
        return choice, scaler

    def autocast(self) -> Any:
        """The autocast context of this run (a no-op without AMP)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ one step

    def check_step_mode(self, step_mode: str | None) -> None:
        """A ConfigError when ``step_mode`` is unknown, or ``single`` with a method that
        combines several tasks' gradients per step (``needs_all_tasks``)."""
        if step_mode is None:
            return
        if step_mode not in STEP_MODES:
            raise ConfigError(
                f"step_mode must be one of {', '.join(STEP_MODES)}, got '{step_mode}'"
            )
        if step_mode == "single" and getattr(self.weighting, "needs_all_tasks", False):
            raise ConfigError(
                f"weighting '{self.weighting}' is gradient-based: it combines the gradients of "
                "several tasks in one step, so it needs step_mode: mixed (one batch of every "
                "task per step); step_mode: single gives it one task per step"
            )

    def _forward_tasks(
        self, batch: TaskBatches
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
        """Outputs and targets of the tasks of a multi-input step, plus the shared
        representation when every task's inputs stack into one batch (one forward pass)."""
        unknown = sorted(set(batch) - set(self.tasks))
        if unknown:
            raise TaskDataError(
                f"the batch has data for unknown task(s) {', '.join(unknown)}; "
                f"the tasks are {', '.join(self.tasks)}"
            )
        names = list(batch)
        inputs = [to_device(batch[t][0], self.device) for t in names]
        targets = {t: to_device(batch[t][1][t], self.device) for t in names}
        if all(isinstance(x, Tensor) for x in inputs) and (
            len({(tuple(x.shape[1:]), x.dtype) for x in inputs}) == 1
        ):
            sizes = [x.shape[0] for x in inputs]
            out, rep = self._forward(torch.cat(inputs))
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            outputs = {t: out[t][a : a + n] for t, a, n in zip(names, starts, sizes, strict=True)}
            return outputs, targets, rep
        if self.weighting.needs_representation:
            raise ConfigError(
                f"weighting '{self.weighting}' needs one shared representation, but the tasks' "
                "inputs differ in shape and are forwarded separately; use jacobian: shared"
            )
        outputs = {}
        for t, x in zip(names, inputs, strict=True):
            outputs[t] = self.model(x)[t]
        return outputs, targets, None

    def compute_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Each task's loss, after checking the batch carries a fitting target for it."""
        if not isinstance(targets, Mapping):
            raise TaskDataError(
                f"a batch's targets must be a dict task → tensor, got {type(targets).__name__}"
            )
        unknown = sorted(set(targets) - set(self.tasks))
        if unknown:
            raise TaskDataError(
                f"the batch has targets for unknown task(s) {', '.join(unknown)}; "
                f"the tasks are {', '.join(self.tasks)}"
            )
        losses = {}
        for name, task in self.tasks.items():
            if name not in targets:
                raise TaskDataError(
                    f"task '{name}': the batch has no target for it "
                    f"(targets present: {', '.join(targets) or 'none'})"
                )
            if name not in outputs:
                raise TaskDataError(f"task '{name}': the model produced no output for it")
            losses[name] = task.compute_loss(outputs[name], targets[name], self.check_inputs)
        return losses

    def _forward(self, inputs: Any) -> tuple[dict[str, Tensor], Tensor | None]:
        """Outputs, plus the shared representation when the method needs it or can use it."""
        wanted = self.weighting.needs_representation or (
            self.weighting.uses_representation and getattr(self.model, "has_representation", False)
        )
        if wanted:
            return self.model.forward_with_representation(inputs)
        return self.model(inputs), None

    def train_step(self, batch: Batch | TaskBatches) -> dict[str, float]:
        """One optimisation step on a joint batch or a multi-input :class:`TaskBatches`;
        returns the loss of each task present (tasks without labels are absent)."""
        self.model.train()
        if isinstance(batch, TaskBatches):
            with self.autocast():
                outputs, targets, representation = self._forward_tasks(batch)
            present = {
                t: self.tasks[t].compute_loss(outputs[t], y, self.check_inputs)
                for t, y in targets.items()
            }
        else:
            inputs, targets = to_device(batch[0], self.device), to_device(batch[1], self.device)
            with self.autocast():
                outputs, representation = self._forward(inputs)
            present = self.compute_losses(outputs, targets)
        present = {t: v for t, v in present.items() if self.tasks[t].label_mask(targets[t]).any()}
        if not present and self.distributed is None:  # distributed: decided over all ranks
            return {}
        losses: dict[str, Tensor | None] = {t: present.get(t) for t in self.tasks}
        if len(present) == len(self.tasks):
            losses = dict(present)
        if self.distributed is not None:  # global values, this rank's share of the gradient
            counts = {t: int(self.tasks[t].label_mask(targets[t]).sum()) for t in present}
            losses = self.distributed.globalize(losses, counts)
        present = {t: v for t, v in losses.items() if v is not None}
        if not present:
            return {}
        values = torch.stack([loss.detach().float() for loss in present.values()]).tolist()
        for name, value in zip(present, values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"task '{name}': loss is {value} at step {self.step + 1} "
                    f"(epoch {self.epoch + 1}); the last good checkpoint is kept"
                )
        self.optimizer.zero_grad(set_to_none=True)
        scale = 1.0
        if self.scaler is not None:  # scale() also initialises the scaler's state for unscale_
            scale = float(self.scaler.scale(torch.ones((), device=self.device)))
        regularization = getattr(self.model, "regularization", None)
        if callable(regularization):
            extra = regularization()
            if isinstance(extra, Tensor) and extra.requires_grad:
                if self.distributed is not None:  # the same on every rank; the sum is reduced
                    extra = extra / self.distributed.world_size
                (extra * scale).backward(retain_graph=True)
        record = self.weighting.backward(
            losses, self.model, representation=representation, loss_scale=scale
        )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        task_losses = dict(zip(present, values, strict=True))
        if self.logger is not None and self.step % self.log_every == 0:
            self.logger.log(
                {
                    "type": "step",
                    "epoch": self.epoch + 1,
                    "step": self.step,
                    "loss": task_losses,
                    **record.to_log(),
                }
            )
        return task_losses

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
        writes = self.run_dir is not None and self.writes
        self.logger = JsonlLogger(self.run_dir / "metrics.jsonl") if writes else None
        board = TensorBoardLogger(self.run_dir / "tensorboard") if writes else None
        if resume is not None:
            self.resume(resume)
            if self.logger is not None:
                self.logger.truncate_after(self.epoch)
        elif self.epoch == 0 and self.seed is not None:
            seed_everything(self.seed, self.deterministic)  # the run's random stream starts here
        bar = ProgressBar(self.progress and self.writes)
        stopped = False
        try:
            last = self.epochs if stop_after is None else min(self.epochs, stop_after)
            while self.epoch < last and not stopped:
                stopped = self._run_epoch(train, val, bar, board)
        finally:
            bar.close()
            if board is not None:
                board.close()
        if self.distributed is not None:
            self.distributed.barrier()  # rank 0's checkpoint is on disk before any rank goes on
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return FitResult(self.history, self.best_epoch, self.best_value, stopped)

    def _run_epoch(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None,
        bar: ProgressBar,
        board: TensorBoardLogger | None,
    ) -> bool:
        started = time.perf_counter()
        totals = dict.fromkeys(self.tasks, 0.0)
        counts = dict.fromkeys(self.tasks, 0)  # steps in which each task was present
        batches = 0
        if self.step_mode is None:  # a multi-input loader says its mode
            self.check_step_mode(getattr(train, "step_mode", None))
        if hasattr(train, "set_epoch"):
            train.set_epoch(self.epoch)
        total = len(train) if hasattr(train, "__len__") else 0  # type: ignore[arg-type]
        bar.start_epoch(f"epoch {self.epoch + 1}/{self.epochs}", total)
        for batch in train:
            losses = self.train_step(batch)
            for name, value in losses.items():
                totals[name] += value
                counts[name] += 1
            batches += 1
            bar.update(losses)
        if batches == 0:
            raise DatasetError("the training data yielded no batch: the train split is empty")
        self.epoch += 1
        # a task absent from the whole epoch keeps its previous mean (NaN in the first epoch)
        previous = self.history[-1]["train"]["loss"] if self.history else {}
        mean_losses = {
            t: v / counts[t] if counts[t] else float(previous.get(t, math.nan))
            for t, v in totals.items()
        }
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
        if val is not None:
            results = self.evaluate(val)
            value = self.monitor.value(results, self.tasks)
            record["val"] = results
            record["monitor"] = {"name": self.monitor.spec, "value": value}
            if self.best_value is None or better(value, self.best_value, self.monitor.direction):
                self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                self.best_weights = model_tensors(self.model)
                if self.run_dir is not None and self.writes:
                    (self.run_dir / "best").mkdir(parents=True, exist_ok=True)
                    save_file(self.best_weights, str(self.run_dir / "best" / "model.safetensors"))
            else:
                self.bad_epochs += 1
                stop = self.patience is not None and self.bad_epochs >= self.patience
        else:
            self.best_epoch = self.epoch
        record["time"] = time.perf_counter() - started
        self.history.append(record)
        if self.logger is not None:
            self.logger.log(record)
        if board is not None:
            board.log(
                flatten("", {k: record[k] for k in ("train", "val") if k in record}), self.epoch
            )
        if self.run_dir is not None and self.writes:
            save_checkpoint(self.run_dir / "checkpoint", self.model, self.state_dict())
        for callback in self.callbacks:
            callback(self, record)
        return stop

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, data: Iterable[Batch]) -> dict[str, Tensor]:
        """Every task's outputs over ``data``, concatenated on the CPU."""
        return self._collect(data)[0]

    @torch.no_grad()
    def evaluate(self, data: Iterable[Batch]) -> Metrics:
        """Each task's mean loss and metrics over ``data``."""
        outputs, targets, losses = self._collect(data, with_targets=True)
        results: Metrics = {}
        for name, task in self.tasks.items():
            results[name] = {
                "loss": losses[name],
                **task.compute_metrics(outputs[name], targets[name]),
            }
        return results

    def _collect(self, data: Iterable[Batch], with_targets: bool = False) -> Any:
        self.model.eval()
        outputs: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        targets: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        loss_sums = dict.fromkeys(self.tasks, 0.0)
        count = 0
        task_counts = dict.fromkeys(self.tasks, 0)  # multi-input data: examples per task
        for batch in data:
            if isinstance(batch, TaskBatches):
                for name, (x, y) in batch.items():
                    with self.autocast():
                        out_t = self.model(to_device(x, self.device))[name]
                    outputs[name].append(out_t.float().cpu())
                    if with_targets:
                        tgt_t = to_device(y[name], self.device)
                        loss = self.tasks[name].compute_loss(out_t, tgt_t, self.check_inputs)
                        loss_sums[name] += float(loss) * tgt_t.shape[0]
                        targets[name].append(tgt_t.cpu())
                    task_counts[name] += out_t.shape[0]
                continue
            inputs = to_device(batch[0] if isinstance(batch, tuple | list) else batch, self.device)
            with self.autocast():
                out = self.model(inputs)
            if with_targets:
                tgt = to_device(batch[1], self.device)
                losses = self.compute_losses(out, tgt)
                size = next(iter(tgt.values())).shape[0]
                for name, loss in losses.items():
                    loss_sums[name] += float(loss) * size
                    targets[name].append(tgt[name].cpu())
                count += size
            for name in self.tasks:
                outputs[name].append(out[name].float().cpu())
        if self.distributed is not None:  # every rank's outputs, in rank order
            outputs = {t: self.distributed.gather(v) for t, v in outputs.items()}
            targets = {t: self.distributed.gather(v) for t, v in targets.items()}
            totals = torch.tensor(
                [count, *loss_sums.values(), *task_counts.values()],
                dtype=torch.float64,
                device=self.device,
            )
            count, *rest = self.distributed.all_reduce(totals).tolist()
            n = len(loss_sums)
            loss_sums = dict(zip(loss_sums, rest[:n], strict=True))
            task_counts = dict(zip(task_counts, rest[n:], strict=True))
        if not outputs or not next(iter(outputs.values())):
            raise DatasetError("the evaluation data yielded no batch: the split is empty")
        cat = {t: torch.cat(v) for t, v in outputs.items()}
        if not with_targets:
            return cat, None, None
        return (
            cat,
            {t: torch.cat(v) for t, v in targets.items()},
            {t: s / (task_counts[t] or count) for t, s in loss_sums.items()},
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model weights that a resumed run needs."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "weighting": self.weighting.state_dict(),
            "weighting_parameters": [p.detach() for p in self.weighting.parameters()],
            "rng": rng_state(),
            "best": {
                "value": self.best_value,
                "epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
            },
            "history": self.history,
        }

    def resume(self, run_dir: str | Path) -> None:
        """Restore model, optimiser, scheduler, method state and RNG from ``run_dir``."""
        run_dir = Path(run_dir)
        state = load_checkpoint(run_dir / "checkpoint", self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.weighting.load_state_dict(state["weighting"])
        for p, saved in zip(
            self.weighting.parameters(), state["weighting_parameters"], strict=True
        ):
            p.data.copy_(saved)
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        best = state["best"]
        self.best_value, self.best_epoch = best["value"], int(best["epoch"])
        self.bad_epochs = int(best["bad_epochs"])
        self.history = list(state["history"])
        best_file = run_dir / "best" / "model.safetensors"
        if best_file.exists():
            self.best_weights = load_file(str(best_file))
