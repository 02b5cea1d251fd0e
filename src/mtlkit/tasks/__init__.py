"""Tasks: what a multi-task model must learn, how to check it, and how to score it.

The core: :class:`Task` and :class:`TaskKind` (the checks at the boundary), the registries
:data:`TASK_KINDS`, :data:`LOSSES` and :data:`METRICS`, and Δm (:func:`delta_m`) with its
interval over seeds (:func:`interval`, :func:`decide`). One module per task family registers
its kinds, losses and metrics when imported, and importing :mod:`mtlkit.tasks` imports them all:

- :mod:`~mtlkit.tasks.tabular`: ``classification``, ``binary``, ``multilabel``, ``regression``;
- :mod:`~mtlkit.tasks.tagging`: ``tagging``, ``bio_tagging`` (token accuracy, entity F1);
- :mod:`~mtlkit.tasks.dense`: ``segmentation``, ``depth``, ``normals``;
- :mod:`~mtlkit.tasks.detection`: ``detection`` (FCOS loss, COCO mAP; boxes and decoding in
  :mod:`~mtlkit.tasks.boxes`, the loss in :mod:`~mtlkit.tasks.fcos`);
- :mod:`~mtlkit.tasks.lm`: ``masked_lm``, ``causal_lm`` (perplexity).

Heads live in :mod:`mtlkit.nn`, data (and LM masking) in :mod:`mtlkit.data`: this package
imports neither.
"""

# the task families: importing them registers their kinds, losses and metrics
from mtlkit.tasks import dense, detection, lm, tabular, tagging
from mtlkit.tasks._task import TASK_KINDS, Task, TaskKind, check_task_names, task_map
from mtlkit.tasks.delta import decide, delta_m, delta_m_per_task, half_width, interval
from mtlkit.tasks.dense import DenseKind
from mtlkit.tasks.detection import DetectionKind
from mtlkit.tasks.lm import lm_task
from mtlkit.tasks.losses import IGNORE_INDEX, LOSSES, LossFn, empty_loss
from mtlkit.tasks.metrics import METRICS, Direction, Metric, better, get_metric, metric
from mtlkit.tasks.tabular import StandardizedMSE
from mtlkit.tasks.tagging import TokenKind, bind_labels

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "METRICS",
    "TASK_KINDS",
    "DenseKind",
    "DetectionKind",
    "Direction",
    "LossFn",
    "Metric",
    "StandardizedMSE",
    "Task",
    "TaskKind",
    "TokenKind",
    "better",
    "bind_labels",
    "check_task_names",
    "decide",
    "delta_m",
    "delta_m_per_task",
    "dense",
    "detection",
    "empty_loss",
    "get_metric",
    "half_width",
    "interval",
    "lm",
    "lm_task",
    "metric",
    "tabular",
    "tagging",
    "task_map",
]
