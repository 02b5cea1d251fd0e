"""Multi-input data: each task has its own dataset, with its own inputs and size.

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

Validation and test data (:meth:`MultiInputData.loader` for ``val``/``test``) go through each
task's own split once, task by task, one task's batch per item.

Under torchrun (``rank``/``world_size``, docs/distributed.md) each task's batch of a step is
sharded like :class:`~mtlkit.data.sharding.ShardedLoader` shards a joint batch: a task's
global batch has ``batch_size · world_size`` examples and rank r takes its r-th slice, so R
ranks with batch b step through exactly the batches of one process with batch R·b. Batch counts,
``steps_per_epoch`` and the sampler's setup are those global batches, and the sampler draws
from its own (seed, epoch) stream, so every rank draws the same task at every step; an
evaluation split is cut into one contiguous block per rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtlkit.data.base import DATASETS, Batch, TensorLoader, TensorSplit
from mtlkit.data.samplers import TaskSampler, build_sampler
from mtlkit.data.sharding import ShardedLoader, shard_split
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.tasks import Task, check_task_names

STEP_MODES = ("single", "mixed")

__all__ = [
    "STEP_MODES",
    "MultiInputData",
    "MultiTaskLoader",
    "TaskBatches",
    "multi_input",
]


class TaskBatches(dict[str, Batch]):
    """One step of multi-input data: ``task → (inputs, targets)``, where ``targets`` holds
    that task's target (``{task: tensor}``). Tasks not in the dict are absent this step."""


def _own(split: TensorSplit, task: str) -> TensorSplit:
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
            t: _task_loader(_own(s, t), int(sizes[t]), shuffle, rank, world_size)
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
        self.loaders = {t: TensorLoader(_own(s, t), batch_size) for t, s in splits.items()}

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[TaskBatches]:
        for task, loader in self.loaders.items():
            for batch in loader:
                yield TaskBatches({task: batch})


@dataclass
class MultiInputData:
    """Per-task datasets: for each task its own train/val/test splits, and a shared encoder.

    It offers what :class:`~mtlkit.data.DataBundle` offers (``tasks``, ``encoder``,
    ``loader``, ``select_tasks``), so runs, the Trainer and the STL/MTL comparison use it the
    same way. ``step_mode``, ``sampler`` and ``steps_per_epoch`` configure the training
    loader (see :class:`MultiTaskLoader`).
    """

    name: str
    tasks: list[Task]
    train: dict[str, TensorSplit]
    val: dict[str, TensorSplit]
    test: dict[str, TensorSplit]
    encoder: tuple[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    step_mode: str = "mixed"
    sampler: str | Mapping[str, Any] | TaskSampler = "proportional"
    steps_per_epoch: int | None = None
    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_task_names(self.tasks)
        for split_name in ("train", "val", "test"):
            splits = getattr(self, split_name)
            for task in self.tasks:
                if task.name not in splits:
                    raise ConfigError(
                        f"multi-input dataset '{self.name}': task '{task.name}' has no "
                        f"{split_name} data; under a multi-input config every task needs a "
                        "dataset of its own"
                    )
                split = splits[task.name]
                _own(split, task.name)
                if len(split) == 0:
                    raise DatasetError(
                        f"multi-input dataset '{self.name}': task '{task.name}': "
                        f"the {split_name} split is empty"
                    )
        if self.step_mode not in STEP_MODES:
            raise ConfigError(
                f"multi-input dataset '{self.name}': step_mode must be one of "
                f"{', '.join(STEP_MODES)}, got '{self.step_mode}'"
            )

    def loader(
        self,
        name: str,
        batch_size: int,
        shuffle: bool | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> MultiTaskLoader | EvalLoader:
        """The training loader (``train``) or a task-by-task evaluation loader; with
        ``world_size`` > 1, rank ``rank``'s shard of it (``batch_size`` per rank)."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split '{name}'; available: train, val, test")
        splits = {t.name: getattr(self, name)[t.name] for t in self.tasks}
        if name != "train":
            if world_size > 1:  # a contiguous block per rank; gathered in rank order
                splits = {t: shard_split(s, rank, world_size) for t, s in splits.items()}
            return EvalLoader(splits, batch_size)
        return MultiTaskLoader(
            splits,
            batch_size,
            step_mode=self.step_mode,
            sampler=self.sampler,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs,
            seed=self.seed,
            shuffle=True if shuffle is None else shuffle,
            rank=rank,
            world_size=world_size,
        )

    def select_tasks(self, names: Sequence[str]) -> MultiInputData:
        """The same data restricted to the tasks in ``names`` (for single-task baselines)."""
        unknown = sorted(set(names) - {t.name for t in self.tasks})
        if unknown:
            raise ConfigError(
                f"task(s) {', '.join(unknown)} have no dataset in multi-input dataset "
                f"'{self.name}' (its tasks: {', '.join(t.name for t in self.tasks)})"
            )
        keep = [t for t in self.tasks if t.name in names]
        return MultiInputData(
            self.name,
            keep,
            {t.name: self.train[t.name] for t in keep},
            {t.name: self.val[t.name] for t in keep},
            {t.name: self.test[t.name] for t in keep},
            self.encoder,
            dict(self.info),
            self.step_mode,
            self.sampler,
            self.steps_per_epoch,
            self.epochs,
            self.seed,
        )


@DATASETS.register("multi_input")
def multi_input(
    datasets: Mapping[str, Mapping[str, Any]] | None = None,
    step_mode: str = "mixed",
    sampler: str | Mapping[str, Any] = "proportional",
    steps_per_epoch: int | None = None,
    epochs: int = 1,
    seed: int = 0,
) -> MultiInputData:
    """A multi-input dataset built from registered datasets, one per task.

    ``datasets`` maps each task to ``{name: <dataset>, params: {...}, task: <its task>}``:
    the task takes that dataset's splits and its task ``task`` (the same name by default),
    renamed. Datasets named twice with the same options are loaded once. The encoder is the
    first dataset's; datasets that declare different encoders need ``model.encoder``.
    """
    if not datasets:
        raise ConfigError(
            "dataset 'multi_input': option 'datasets' must map each task to its own dataset, "
            "e.g. {left: {name: multidigits, task: left}}"
        )
    cache: dict[str, Any] = {}
    tasks: list[Task] = []
    splits: dict[str, dict[str, TensorSplit]] = {"train": {}, "val": {}, "test": {}}
    encoders: dict[str, tuple[str, dict[str, Any]]] = {}
    for task_name, spec in datasets.items():
        where = f"dataset 'multi_input': task '{task_name}'"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"{where} has no dataset: give {{name: <dataset>, params: {{}}}}")
        extra = sorted(set(spec) - {"name", "params", "task"})
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
        params = dict(spec.get("params") or {})
        key = repr((spec["name"], sorted(params.items())))
        if key not in cache:
            cache[key] = DATASETS.build(spec["name"], **params)
        bundle = cache[key]
        source = str(spec.get("task", task_name))
        found = {t.name: t for t in bundle.tasks}
        if source not in found:
            raise ConfigError(
                f"{where}: dataset '{spec['name']}' has no task '{source}' "
                f"(its tasks: {', '.join(found)})"
            )
        base = found[source]
        tasks.append(_renamed(base, task_name))
        for split_name in splits:
            if not hasattr(bundle, "split"):
                raise ConfigError(f"{where}: dataset '{spec['name']}' is itself multi-input")
            split = bundle.split(split_name)
            target = split.targets[source]
            splits[split_name][task_name] = TensorSplit(
                split.inputs, {task_name: target}, split_name
            )
        encoders[task_name] = bundle.encoder
    first = next(iter(encoders.values()))
    return MultiInputData(
        "multi_input",
        tasks,
        splits["train"],
        splits["val"],
        splits["test"],
        first,
        info={"sources": {t: dict(s) for t, s in datasets.items()}, "encoders": encoders},
        step_mode=step_mode,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        seed=seed,
    )


def _renamed(task: Task, name: str) -> Task:
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    fields["name"] = name
    return Task(**fields)
