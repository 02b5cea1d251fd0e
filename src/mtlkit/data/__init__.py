"""Datasets that ship with mtlkit or its dependencies, and the batch format."""

from mtlkit.data import digits, gss  # noqa: F401  (registration)
from mtlkit.data.base import DATASETS, DataBundle, TensorLoader, TensorSplit, load_dataset

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "TensorSplit", "load_dataset"]
