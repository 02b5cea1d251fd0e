"""Datasets that ship with mtlkit or its dependencies, and the batch format."""

from mtlkit.data import (  # noqa: F401  (registration)
    coco,
    conll,
    dense,
    digits,
    glue,
    gss,
    multi,
    qm9,
    tabular,
    treebank,
    user,
)
from mtlkit.data.base import (
    DATASETS,
    DataBundle,
    DatasetSplit,
    TensorLoader,
    TensorSplit,
    load_dataset,
)

__all__ = ["DATASETS", "DataBundle", "DatasetSplit", "TensorLoader", "TensorSplit", "load_dataset"]
