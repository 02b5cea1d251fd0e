"""Shared fixtures: tiny data, models and configs that train in well under a second."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.nn import build_model
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.tasks import Task


def tiny_tasks() -> list[Task]:
    return [Task("cls", "classification", 3), Task("reg", "regression", 1)]


def tiny_split(n: int = 64, seed: int = 0, name: str = "train") -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorSplit(
        x,
        {"cls": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), "reg": x[:, 2] * 2 + x[:, 3]},
        name,
    )


def tiny_model(seed: int = 0, tasks: list[Task] | None = None) -> Any:
    torch.manual_seed(seed)
    return build_model("hps", MLPEncoder(6, hidden=[16]), tasks or tiny_tasks())


@pytest.fixture
def loaders() -> tuple[TensorLoader, TensorLoader]:
    return (
        TensorLoader(tiny_split(64, 0), 16, shuffle=True),
        TensorLoader(tiny_split(32, 1, "val"), 32),
    )


def small_digits_config(**train: Any) -> dict[str, Any]:
    """A MultiDigits config small enough for tests."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {
            "name": "multidigits",
            "params": {"n_train": 256, "n_val": 64, "n_test": 64},
            "batch_size": 64,
        },
        "model": {
            "architecture": "hps",
            "encoder": {"name": "cnn", "params": {"channels": [8, 8], "out_features": 16}},
        },
        "train": {"epochs": 2, "monitor": "mean/accuracy", **train},
    }


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> None:
    """Tiny models run fastest on one thread, and test workers share 2 cores."""
    torch.set_num_threads(1)
