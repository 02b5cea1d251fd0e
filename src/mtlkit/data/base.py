"""In-memory multi-task datasets, a fast batch loader, and the dataset registry.

A batch is ``(inputs, targets)``: ``inputs`` a tensor or a dict of tensors, ``targets`` a dict
``task name → tensor``. Any iterable of such batches (a torch DataLoader included) works with
the Trainer; :class:`TensorLoader` is a fast one for datasets held in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import torch
from torch import Tensor

from mtlkit.errors import DatasetError
from mtlkit.registry import Registry
from mtlkit.tasks import Task

Inputs = Tensor | dict[str, Tensor]
Batch = tuple[Inputs, dict[str, Tensor]]

DATASETS: Registry[Any] = Registry("dataset")


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside dicts, lists and tuples to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _length(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        sizes = {k: v.shape[0] for k, v in inputs.items()}
        if len(set(sizes.values())) > 1:
            raise DatasetError(f"input tensors disagree on the number of samples: {sizes}")
        return next(iter(sizes.values()))
    return inputs.shape[0]


def _index(inputs: Inputs, idx: Tensor) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v[idx] for k, v in inputs.items()}
    return inputs[idx]


@dataclass
class TensorSplit:
    """One split held in memory: inputs and a target tensor per task, all with N rows."""

    inputs: Inputs
    targets: dict[str, Tensor]
    name: str = "split"

    def __post_init__(self) -> None:
        n = _length(self.inputs)
        for task, target in self.targets.items():
            if target.shape[0] != n:
                raise DatasetError(
                    f"{self.name} split: task '{task}' has {target.shape[0]} targets for {n} inputs"
                )

    def __len__(self) -> int:
        return _length(self.inputs)

    def __getitem__(self, idx: Tensor | slice | int) -> Batch:
        index = torch.as_tensor(idx) if not isinstance(idx, slice) else idx
        return _index(self.inputs, index), {t: y[index] for t, y in self.targets.items()}


class DatasetSplit(torch.utils.data.Dataset):
    """One split read example by example from a map-style ``torch.utils.data.Dataset``
    (from disk, say), batched by a ``DataLoader`` with ``num_workers`` worker processes.

    Each example of ``dataset`` is ``(inputs, targets)``: ``inputs`` a tensor (or a dict of
    tensors) without the batch dimension, ``targets`` a dict ``task name → tensor or number``.
    ``tasks`` restricts the targets to those tasks. Indexing with an int gives one example
    (what a DataLoader asks for); with a tensor of indices or a slice, the collated batch, as
    :class:`TensorSplit` does (so the sharded and k-fold loaders work on it too).
    """

    def __init__(
        self,
        dataset: Any,
        name: str = "split",
        tasks: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        if num_workers < 0:
            raise DatasetError(f"{name} split: num_workers must be ≥ 0, got {num_workers}")
        self.dataset = dataset
        self.name = name
        self.tasks = tasks
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, int):
            inputs, targets = self.dataset[idx]
            if self.tasks is not None:
                targets = {t: targets[t] for t in self.tasks}
            return inputs, targets
        index = range(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        return torch.utils.data.default_collate([self[int(i)] for i in index])

    @property
    def inputs(self) -> Inputs:
        """The first example's inputs as a batch of one (its shape and dtype)."""
        return self[0:1][0]  # type: ignore[no-any-return]

    def select(self, tasks: list[str]) -> DatasetSplit:
        """The same split with the targets of ``tasks`` only."""
        return DatasetSplit(self.dataset, self.name, list(tasks), self.num_workers)

    def loader(self, batch_size: int, shuffle: bool = False) -> torch.utils.data.DataLoader:
        """Batches through a DataLoader (shuffled with the global torch generator, like
        :class:`TensorLoader`, so a seeded run is reproducible)."""
        if batch_size < 1:
            raise DatasetError(f"batch_size must be ≥ 1, got {batch_size}")
        return torch.utils.data.DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


Split = TensorSplit | DatasetSplit


class TensorLoader:
    """Batches of a :class:`TensorSplit`, shuffled with the global torch RNG when asked.

    Drawing the permutation from the global generator (as torch's RandomSampler does) makes a
    seeded run reproducible and a resumed run continue exactly, since the Trainer saves and
    restores that generator.
    """

    def __init__(
        self, split: TensorSplit, batch_size: int, shuffle: bool = False, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise DatasetError(f"batch_size must be ≥ 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self.split[order[start : start + self.batch_size]]


@dataclass
class DataBundle:
    """A dataset's splits, its tasks, and the encoder that suits its inputs.

    ``encoder`` is ``(name, options)`` for the encoder registry, e.g.
    ``("mlp", {"in_features": 5, "cardinalities": [3, 7]})``.
    """

    name: str
    train: Split
    val: Split
    test: Split
    tasks: list[Task]
    encoder: tuple[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in (self.train, self.val, self.test):
            if len(split) == 0:
                raise DatasetError(f"dataset '{self.name}': the {split.name} split is empty")

    def split(self, name: str) -> Split:
        """The split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split '{name}'; available: train, val, test")
        return getattr(self, name)

    def loader(self, name: str, batch_size: int, shuffle: bool | None = None) -> Any:
        """A loader over one split; shuffled by default for ``train`` only (a
        :class:`DatasetSplit` is read by a DataLoader with its workers)."""
        split = self.split(name)
        shuffle = (name == "train") if shuffle is None else shuffle
        if isinstance(split, DatasetSplit):
            return split.loader(batch_size, shuffle=shuffle)
        return TensorLoader(split, batch_size, shuffle=shuffle)

    def select_tasks(self, names: list[str]) -> Self:
        """The same data restricted to the tasks in ``names`` (for single-task baselines); a
        subclass keeps its own fields (a task whose targets the loaders make, such as a
        language-modelling task, has none in the splits)."""
        unknown = sorted(set(names) - {t.name for t in self.tasks})
        if unknown:
            raise DatasetError(
                f"dataset '{self.name}' has no task(s) {', '.join(unknown)}; "
                f"its tasks are {', '.join(t.name for t in self.tasks)}"
            )

        def keep(split: Split) -> Split:
            if isinstance(split, DatasetSplit):
                return split.select(names)
            targets = {t: split.targets[t] for t in names if t in split.targets}
            return TensorSplit(split.inputs, targets, split.name)

        return dataclasses.replace(
            self,
            train=keep(self.train),
            val=keep(self.val),
            test=keep(self.test),
            tasks=[t for t in self.tasks if t.name in names],
            info=dict(self.info),
        )


def load_dataset(name: str, /, **params: Any) -> DataBundle:
    """Build a registered dataset by name."""
    return DATASETS.build(name, **params)
