"""Multi-input data: each task has its own dataset, with its own inputs and size.

- :mod:`~mtlkit.data.multi.dataset`: :class:`MultiInputData` (per-task splits and a shared
  encoder) and the registered dataset ``multi_input``;
- :mod:`~mtlkit.data.multi.loaders`: its batches: :class:`MultiTaskLoader` (training, step
  modes ``single`` and ``mixed``, sharded under torchrun) and the task-by-task evaluation
  loader; a step's batch is a :class:`TaskBatches`.
"""

from mtlkit.data.multi.dataset import MultiInputData, multi_input
from mtlkit.data.multi.loaders import STEP_MODES, MultiTaskLoader, TaskBatches

__all__ = ["STEP_MODES", "MultiInputData", "MultiTaskLoader", "TaskBatches", "multi_input"]
