"""Multi-input loaders: training batches of several per-task datasets, and evaluation ones.

A step's batch is a :class:`TaskBatches`, a dict ``task → (inputs, targets)``; the Trainer
forwards each task's inputs and balances the losses of the tasks present. Two step modes
(:class:`MultiTaskLoader`):

- ``single``: one task's batch per step, the task drawn by a task sampler
  (:mod:`mtlkit.data.samplers`), as in MT-DNN (Liu, He, Chen & Gao 2019, "Multi-Task Deep
  Neural Networks for Natural Language Understanding", ACL). The weighting method sees one
  task's loss per step, so only loss-based methods apply;
- ``mixed``: one batch of every task per step, their losses combined by the weighting method.
  Gradient-based methods (MGDA, PCGrad, ...) need this mode: they combine the task gradients
  of one step.

What an epoch is: ``steps_per_epoch`` steps. By default, in ``single`` mode the total number
of batches over all tasks, Σ_i b_i (with the proportional sampler, each example is seen once
per epoch in expectation); in ``mixed`` mode the largest task's number of batches, max_i b_i
(the largest dataset is seen once). A task whose data runs out within an epoch is reshuffled
and continues; every epoch starts each task's data afresh (a new shuffle, from the global
random stream that the Trainer saves and restores).

Validation and test data (:class:`EvalLoader`, what
:meth:`~mtlkit.data.multi.dataset.MultiInputData.loader` gives for ``val``/``test``) go through
each task's own split once, task by task, one task's batch per item.

Under torchrun (``rank``/``world_size``, docs/distributed.md) each task's batch of a step is
sharded like :class:`~mtlkit.data.sharding.ShardedLoader` shards a joint batch: a task's
global batch has ``batch_size · world_size`` examples and rank r takes its r-th slice, so R
ranks with batch b step through exactly the batches of one process with batch R·b. Batch counts,
``steps_per_epoch`` and the sampler's setup are those global batches, and the sampler draws
from its own (seed, epoch) stream, so every rank draws the same task at every step; an
evaluation split is cut into one contiguous block per rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mtlkit.data.base import Batch, TensorLoader, TensorSplit
from mtlkit.data.samplers import TaskSampler, build_sampler
from mtlkit.data.sharding import ShardedLoader
from mtlkit.errors import ConfigError, DatasetError

STEP_MODES = ("single", "mixed")

__all__ = ["STEP_MODES", "EvalLoader", "MultiTaskLoader", "TaskBatches", "task_split"]


class TaskBatches(dict[str, Batch]):
    """One step of multi-input data: ``task → (inputs, targets)``, where ``targets`` holds
    that task's target (``{task: tensor}``). Tasks not in the dict are absent this step."""


def task_split(split: TensorSplit, task: str) -> TensorSplit:
    """``split`` with only ``task``'s target; a split without it is a DatasetError."""
    if task not in split.targets:
        raise DatasetError(
            f"task '{task}': its {split.name} split has no target for it "
            f"(targets: {', '.join(split.targets) or 'none'})"
        )
    return TensorSplit(split.inputs, {task: split.targets[task]}, split.name)


class MultiTaskLoader:
    """Training batches of several per-task datasets (see the module docstring).

    Args:
        splits: each task's training split (its targets must include the task).
        batch_size: examples per task batch (an int, or one per task).
        step_mode: ``single`` (one task per step, drawn by ``sampler``) or ``mixed`` (every
            task every step).
        sampler: a registered task sampler name, ``{name: ..., **options}`` or an instance
            (``single`` mode only).
        steps_per_epoch: steps in one epoch (see the module docstring for the default).
        epochs: the run's number of epochs (the annealed sampler needs it).
        seed: seeds the sampler, when it has no seed of its own.
        shuffle: reshuffle each task's data every time it is started.
        rank, world_size: under torchrun, this process's shard of every task's batch (batch
            ``batch_size`` per rank, ``batch_size · world_size`` over all ranks).
    """

    def __init__(
        self,
        splits: Mapping[str, TensorSplit],
        batch_size: int | Mapping[str, int],
        *,
        step_mode: str = "mixed",
        sampler: str | Mapping[str, Any] | TaskSampler = "proportional",
        steps_per_epoch: int | None = None,
        epochs: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if step_mode not in STEP_MODES:
            raise ConfigError(
                f"multi-task loader: option 'step_mode' must be one of {', '.join(STEP_MODES)}, "
                f"got '{step_mode}'"
            )
        if not splits:
            raise ConfigError("multi-task loader: no task has a dataset")
        sizes = batch_size if isinstance(batch_size, Mapping) else dict.fromkeys(splits, batch_size)
        missing = sorted(set(splits) - set(sizes))
        if missing:
            raise ConfigError(f"multi-task loader: no batch size for task(s) {', '.join(missing)}")
        for option, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"multi-task loader: option '{option}' must be an integer")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                "multi-task loader: option 'rank' must be in [0, world_size), "
                f"got rank {rank} of {world_size}"
            )
        self.rank, self.world_size = rank, world_size
        self.loaders: dict[str, TensorLoader | ShardedLoader] = {
            t: _task_loader(task_split(s, t), int(sizes[t]), shuffle, rank, world_size)
            for t, s in splits.items()
        }
        for task, loader in self.loaders.items():
            if len(loader) == 0:
                few = f" (fewer examples than the {world_size} ranks)" if world_size > 1 else ""
                raise DatasetError(f"task '{task}': its training split is empty{few}")
        self.step_mode = step_mode
        self.sampler = build_sampler(sampler, seed)
        batches = {t: len(loader) for t, loader in self.loaders.items()}
        self.sampler.setup({t: len(s) for t, s in splits.items()}, batches, epochs)
        default = sum(batches.values()) if step_mode == "single" else max(batches.values())
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool) or int(steps_per_epoch) < 1
        ):
            raise ConfigError(
                f"multi-task loader: option 'steps_per_epoch' must be ≥ 1, got {steps_per_epoch}"
            )
        self.steps_per_epoch = int(steps_per_epoch) if steps_per_epoch is not None else default
        self.epoch = 0

    @property
    def tasks(self) -> list[str]:
        return list(self.loaders)

    def set_epoch(self, epoch: int) -> None:
        """The epoch (0-based) the next iteration is; the Trainer sets it before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[TaskBatches]:
        self.sampler.start_epoch(self.epoch)
        streams = {t: _Cycle(loader) for t, loader in self.loaders.items()}
        for _ in range(self.steps_per_epoch):
            if self.step_mode == "single":
                task = self.sampler.draw()
                yield TaskBatches({task: streams[task].next()})
            else:
                yield TaskBatches({t: s.next() for t, s in streams.items()})
        self.epoch += 1

    def schedule(self) -> dict[str, Any]:
        """Everything that fixes which task each step draws and how many batches each task
        has: the step mode, the sampler (its class, options, tasks, sizes, batches, epochs and
        generator state), the steps per epoch and the epoch. Equal on every rank ⇒ every rank
        draws the same task at every step (the distributed run checks it once at start)."""
        s = self.sampler
        return {
            "step_mode": self.step_mode,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "global_batch": {t: _global_batch(x) for t, x in self.loaders.items()},
            "sampler": repr(s),
            "tasks": list(s.tasks),
            "sizes": dict(s.sizes),
            "batches": dict(s.batches),
            "epochs": s.epochs,
            "position": s.position,
            "generator": s.generator.get_state().tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the sampler's state."""
        return {"epoch": self.epoch, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.sampler.load_state_dict(state["sampler"])


def _task_loader(
    split: TensorSplit, batch_size: int, shuffle: bool, rank: int, world_size: int
) -> TensorLoader | ShardedLoader:
    """One task's training batches: all of them, or this rank's slice of each global batch."""
    if world_size == 1:
        return TensorLoader(split, batch_size, shuffle=shuffle)
    return ShardedLoader(split, batch_size, rank=rank, world_size=world_size, shuffle=shuffle)


def _global_batch(loader: TensorLoader | ShardedLoader) -> int:
    return int(getattr(loader, "global_batch_size", loader.batch_size))


class _Cycle:
    """A task's batches without end: a new pass (a new shuffle) when one runs out."""

    def __init__(self, loader: TensorLoader | ShardedLoader) -> None:
        self.loader = loader
        self.iterator = iter(loader)

    def next(self) -> Batch:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)


class EvalLoader:
    """Each task's split once, task by task: one task's batch per item."""

    def __init__(self, splits: Mapping[str, TensorSplit], batch_size: int) -> None:
        self.loaders = {t: TensorLoader(task_split(s, t), batch_size) for t, s in splits.items()}

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[TaskBatches]:
        for task, loader in self.loaders.items():
            for batch in loader:
                yield TaskBatches({task: batch})
