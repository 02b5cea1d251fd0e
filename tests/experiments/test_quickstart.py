"""examples/quickstart.py: the plain loop and the Trainer give the same losses."""

import importlib.util
from pathlib import Path

import pytest


def load_example():
    path = Path(__file__).parents[2] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_equals_trainer() -> None:
    example = load_example()
    plain = example.train_plain(epochs=2, seed=3)
    trainer = example.train_with_trainer(epochs=2, seed=3)
    for a, b in zip(plain, trainer, strict=True):
        assert a.keys() == b.keys() == {"digit", "coords"}
        for task in a:
            assert a[task] == pytest.approx(b[task], rel=1e-6)
    assert plain[1]["coords"] < plain[0]["coords"]  # it learns
