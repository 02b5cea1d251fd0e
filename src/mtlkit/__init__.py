"""mtlkit: multi-task learning for PyTorch.

Tasks (:mod:`mtlkit.tasks`), shared and task-specific structures (:mod:`mtlkit.nn`), loss
balancing (:mod:`mtlkit.weighting`), training (:mod:`mtlkit.train`), built-in data
(:mod:`mtlkit.data`) and experiments (:mod:`mtlkit.experiments`).
"""

import os
from typing import TYPE_CHECKING

from mtlkit import data, nn, tasks, train, weighting
from mtlkit.errors import ConfigError, MtlkitError, TaskDataError
from mtlkit.nn import MTLModel, build_model
from mtlkit.tasks import METRICS, Task, delta_m
from mtlkit.train import Trainer


def load_run(run_dir: "str | os.PathLike[str]") -> "TrainedRun":
    """The trained model and tasks of a run folder, without its data
    (:func:`mtlkit.experiments.inference.load_run`)."""
    from mtlkit.experiments.inference import load_run as _load_run

    return _load_run(run_dir)


if TYPE_CHECKING:
    from mtlkit.experiments.inference import TrainedRun

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "ConfigError",
    "MTLModel",
    "MtlkitError",
    "Task",
    "TaskDataError",
    "Trainer",
    "__version__",
    "build_model",
    "data",
    "delta_m",
    "load_run",
    "nn",
    "tasks",
    "train",
    "weighting",
]
