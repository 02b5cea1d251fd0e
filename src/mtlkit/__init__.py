"""mtlkit: multi-task learning for PyTorch.

Tasks (:mod:`mtlkit.tasks`), shared and task-specific structures (:mod:`mtlkit.nn`), loss
balancing (:mod:`mtlkit.weighting`), training (:mod:`mtlkit.train`), built-in data
(:mod:`mtlkit.data`) and experiments (:mod:`mtlkit.experiments`).
"""

from mtlkit import data, nn, tasks, train, weighting
from mtlkit.errors import ConfigError, MtlkitError, TaskDataError
from mtlkit.nn import MTLModel, build_model
from mtlkit.tasks import METRICS, Task, delta_m
from mtlkit.train import Trainer

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
    "nn",
    "tasks",
    "train",
    "weighting",
]
