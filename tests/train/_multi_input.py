"""Multi-input data shared by ``test_distributed_multi.py`` (rank shards in one process) and
``test_distributed.py`` (2 gloo ranks): two tasks, each with its own splits of different sizes.
Not a test module: test modules import from here, never from one another.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtlkit.data import TensorSplit
from mtlkit.data.multi import MultiInputData
from mtlkit.tasks import Task

WORLD = 2
PER_RANK = 4  # batch per rank; one process uses WORLD · PER_RANK
#: different sizes, neither a multiple of the global batch 8: last global batches of 5 (3 + 2)
#: and 6 (3 + 3); 6 and 3 batches per epoch
SIZES = {"cls": 45, "reg": 22}
TASKS = [Task("cls", "classification", 3), Task("reg", "regression", 1)]


def task_split(task: str, n: int, seed: int, name: str = "train") -> TensorSplit:
    """A task's own dataset: 6 features, the task's target only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long() if task == "cls" else x[:, 2] * 2 + x[:, 3]
    return TensorSplit(x, {task: y}, name)


def multi_data(
    step_mode: str = "mixed", sampler: Any = "proportional", epochs: int = 2, seed: int = 0
) -> MultiInputData:
    """Two tasks with their own splits of different sizes (val: 13 and 9 examples)."""
    return MultiInputData(
        "tiny_multi",
        [copy.deepcopy(t) for t in TASKS],
        {t: task_split(t, n, i) for i, (t, n) in enumerate(SIZES.items())},
        {
            t: task_split(t, n, 10 + i, "val")
            for i, (t, n) in enumerate({"cls": 13, "reg": 9}.items())
        },
        {t: task_split(t, 8, 20 + i, "test") for i, t in enumerate(SIZES)},
        ("mlp", {"in_features": 6}),
        step_mode=step_mode,
        sampler=sampler,
        epochs=epochs,
        seed=seed,
    )
