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
    treebank,
)
from mtlkit.data.base import DATASETS, DataBundle, TensorLoader, TensorSplit, load_dataset

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "TensorSplit", "load_dataset"]
