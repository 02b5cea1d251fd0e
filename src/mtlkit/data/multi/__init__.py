"""Multi-input data (see :mod:`mtlkit.data.multi.loaders`)."""

from mtlkit.data.multi.loaders import (
    STEP_MODES,
    MultiInputData,
    MultiTaskLoader,
    TaskBatches,
    multi_input,
)

__all__ = ["STEP_MODES", "MultiInputData", "MultiTaskLoader", "TaskBatches", "multi_input"]
