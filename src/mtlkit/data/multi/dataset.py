"""Multi-input datasets: each task its own train/val/test splits (:class:`MultiInputData`),
and the registered ``multi_input`` dataset that builds one from other registered datasets.

Their training and evaluation batches come from :mod:`mtlkit.data.multi.loaders`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtlkit.data.base import DATASETS, TensorSplit
from mtlkit.data.multi.loaders import STEP_MODES, EvalLoader, MultiTaskLoader, task_split
from mtlkit.data.samplers import TaskSampler
from mtlkit.data.sharding import shard_split
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.tasks import Task, check_task_names

__all__ = ["MultiInputData", "multi_input"]


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
                task_split(split, task.name)
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
