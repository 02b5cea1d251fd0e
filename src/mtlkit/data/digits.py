"""MultiDigits: two real handwritten digits side by side on one canvas, one task per digit.

The idea of MultiMNIST (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective
Optimization"), built from scikit-learn's bundled ``load_digits()`` (1,797 8×8 images, no
download). Each sample places a "left" and a "right" digit on a 12 × 20 canvas with random
shifts, so the two overlap a little in the middle; the tasks are the two digits' classes.
Both tasks need the same skill (reading a digit), which is what a shared encoder can exploit.

Construction is deterministic given ``seed``. The 1,797 source images are first split into
disjoint train/val/test pools; pairs are drawn within a pool, so no source image is shared
between splits.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import DatasetError, require
from mtlkit.tasks import Task

HEIGHT, WIDTH = 12, 20


def _compose(left: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    dy, dx = rng.integers(0, HEIGHT - 8 + 1), rng.integers(0, 4)
    canvas[dy : dy + 8, dx : dx + 8] = left
    dy, dx = rng.integers(0, HEIGHT - 8 + 1), rng.integers(WIDTH - 8 - 3, WIDTH - 8 + 1)
    region = canvas[dy : dy + 8, dx : dx + 8]
    np.maximum(region, right, out=region)
    return canvas


def make_split(
    images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, name: str
) -> TensorSplit:
    """``n`` canvases whose digits are drawn (with replacement) from ``images``."""
    left = rng.integers(0, len(images), n)
    right = rng.integers(0, len(images), n)
    canvases = np.stack(
        [_compose(images[i], images[j], rng) for i, j in zip(left, right, strict=True)]
    )
    noise = rng.normal(0.0, 0.05, canvases.shape).astype(np.float32)
    x = torch.from_numpy(np.clip(canvases + noise, 0.0, 1.0)).unsqueeze(1)
    targets = {
        "left": torch.from_numpy(labels[left].astype(np.int64)),
        "right": torch.from_numpy(labels[right].astype(np.int64)),
    }
    return TensorSplit(x, targets, name)


@DATASETS.register("multidigits")
def multidigits(
    seed: int = 0,
    n_train: int = 6000,
    n_val: int = 1500,
    n_test: int = 1500,
    source_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> DataBundle:
    """MultiDigits with ``n_*`` canvases per split (see the module docstring)."""
    load_digits = require(
        "sklearn.datasets", "datasets", "the multidigits dataset (scikit-learn's digits)"
    ).load_digits

    if min(n_train, n_val, n_test) < 1:
        raise DatasetError(
            f"dataset 'multidigits': n_train, n_val and n_test must be ≥ 1, "
            f"got {n_train}, {n_val}, {n_test}"
        )
    if len(source_fractions) != 3 or min(source_fractions) <= 0 or sum(source_fractions) > 1.0001:
        raise DatasetError(
            "dataset 'multidigits': source_fractions must be three positive shares summing to ≤ 1"
        )
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    a = int(source_fractions[0] * len(images))
    b = a + int(source_fractions[1] * len(images))
    c = b + int(source_fractions[2] * len(images))
    pools = {"train": order[:a], "val": order[a:b], "test": order[b:c]}
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits = {
        name: make_split(images[idx], labels[idx], sizes[name], rng, name)
        for name, idx in pools.items()
    }
    tasks = [
        Task("left", "classification", 10, metrics=["accuracy", "macro_f1"]),
        Task("right", "classification", 10, metrics=["accuracy", "macro_f1"]),
    ]
    return DataBundle(
        "multidigits",
        splits["train"],
        splits["val"],
        splits["test"],
        tasks,
        ("cnn", {"in_channels": 1}),
        info={
            "source_pools": {k: v.tolist() for k, v in pools.items()},
            "image_size": [HEIGHT, WIDTH],
        },
    )
