"""A tiny Trainer and its data, shared by ``test_trainer.py`` and ``test_logging.py``. Not a
test module: test modules import from here, never from one another.
"""

from __future__ import annotations

from pathlib import Path

from mtlkit.data import TensorLoader
from mtlkit.train import Trainer
from mtlkit.weighting import get
from tests.conftest import tiny_model, tiny_split, tiny_tasks


def make_trainer(run_dir: Path | None = None, weighting: str = "ew", **kwargs) -> Trainer:
    options = {
        "epochs": 4,
        "monitor": "cls/accuracy",
        "optimizer_params": {"lr": 0.01},
        "scheduler": "cosine",
        "progress": False,
        "device": "cpu",
        **kwargs,
    }
    return Trainer(tiny_model(), tiny_tasks(), get(weighting), run_dir=run_dir, **options)


def data() -> tuple[TensorLoader, TensorLoader]:
    return TensorLoader(tiny_split(64, 0), 16, shuffle=True), TensorLoader(tiny_split(32, 1), 32)
