"""Your own table from a config: the ``tabular`` dataset (CSV or Parquet → features and tasks).

```yaml
data:
  name: tabular
  params:
    path: customers.csv          # or .parquet (extra `parquet`)
    features: [age, income]      # numeric columns (default: every column not named elsewhere)
    categorical: [city]          # embedded by the mlp encoder (codes; 0 = missing or unseen)
    tasks:                       # task name → its column (default: the name) and kind
      churn: {kind: binary}
      spend: {kind: regression, column: spend_usd}
      segment: {kind: classification}   # labels: integers 0..C-1 or any strings
    split: {fractions: [0.7, 0.15, 0.15], seed: 0}   # or {column: split} (train/val/test)
```

Numeric features are standardised with the training split's mean and standard deviation; a
missing value (empty cell, ``NA``, ``NaN``) takes the training mean. A regression task learns
its standardised target and predicts in the column's units (head ``standardized``, loss
``StandardizedMSE``, from the training split), unless its spec names a head or loss. A
missing label is a missing label (``-100`` or NaN): the task gets no loss for that row, as
with partial labels.
Classification labels that are not integers are numbered in sorted order (the names are in
``bundle.info["labels"]``). Every bad input is a :class:`~mtlkit.errors.DatasetError` that
names the file, and the column, row or task at fault.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import DatasetError, MissingExtraError
from mtlkit.files import read_text
from mtlkit.tasks import StandardizedMSE, Task

SPLITS = ("train", "val", "test")
MISSING = {"", "na", "nan", "null", "none"}
KINDS = ("binary", "classification", "regression")


@dataclass
class TableBundle(DataBundle):
    """A :class:`DataBundle` read from a table; ``feature_names`` are its numeric input
    columns in order (``mtlkit predict`` reads them by name)."""

    feature_names: list[str] = field(default_factory=list)


def read_columns(path: Path) -> dict[str, list[Any]]:
    """Column name → values of a CSV or Parquet file (CSV values are strings)."""
    if not path.is_file():
        raise DatasetError(f"dataset 'tabular': {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError("pyarrow", "parquet", f"reading {path}") from None
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise DatasetError(f"dataset 'tabular': {path} is not a Parquet file ({err})") from None
        return {name: list(values) for name, values in table.to_pydict().items()}
    if suffix not in (".csv", ".tsv"):
        raise DatasetError(
            f"dataset 'tabular': {path}: unknown file type '{suffix}'; use .csv or .parquet"
        )
    text = read_text(path, "dataset 'tabular': file", DatasetError)
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{path}: the file is empty (no header row)")
        if len(set(header)) != len(header):
            repeated = sorted({c for c in header if header.count(c) > 1})
            raise DatasetError(
                f"{path}: column(s) {', '.join(repeated)} appear twice in the header"
            )
        rows = list(reader)
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: row {i + 2} has {len(row)} fields, the header {len(header)}"
            )
    return {name: [row[j] for row in rows] for j, name in enumerate(header)}


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING


def _numbers(path: Path, column: str, values: Sequence[Any], what: str) -> np.ndarray:
    """Float values of a column (NaN where missing); a value that is no number is an error."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if _missing(value):
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{path}: column '{column}' ({what}), row {i + 1}: {value!r} is not a number"
            ) from None
        if not math.isfinite(out[i]):
            raise DatasetError(
                f"{path}: column '{column}' ({what}), row {i + 1}: {value!r} is not finite"
            )
    return out


def _split_rows(
    path: Path, columns: Mapping[str, list[Any]], n: int, split: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The row indices of each split: by a split column, or by fractions of a seeded shuffle."""
    unknown = sorted(set(split) - {"column", "fractions", "seed"})
    if unknown:
        raise DatasetError(
            f"dataset 'tabular': option 'split' has unknown key(s) {', '.join(unknown)}; use "
            "column, or fractions and seed"
        )
    if "column" in split:
        column = split["column"]
        if column not in columns:
            raise DatasetError(
                f"{path}: no split column '{column}' (columns: {', '.join(columns)})"
            )
        names = [str(v).strip().lower() for v in columns[column]]
        aliases = {"validation": "val", "valid": "val", "dev": "val"}
        names = [aliases.get(v, v) for v in names]
        bad = sorted({v for v in names if v not in SPLITS})
        if bad:
            raise DatasetError(
                f"{path}: column '{column}' holds {bad[:3]}; a split column holds train, val or "
                "test"
            )
        return {s: np.flatnonzero(np.array(names) == s) for s in SPLITS}
    fractions = [float(f) for f in split.get("fractions", (0.7, 0.15, 0.15))]
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(
            "dataset 'tabular': option 'split.fractions' must be three positive fractions "
            f"summing to 1 (train, val, test), got {fractions}"
        )
    order = np.random.default_rng(int(split.get("seed", 0))).permutation(n)
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def _task(
    path: Path, name: str, spec: Any, columns: Mapping[str, list[Any]], train: np.ndarray
) -> tuple[Task, np.ndarray, list[str] | None, str]:
    """A task, its target values for every row, its label names (classification) and column."""
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec or {})
    column = spec.pop("column", name)
    kind = spec.pop("kind", None)
    if kind not in KINDS:
        raise DatasetError(
            f"dataset 'tabular': task '{name}': option 'kind' must be one of {', '.join(KINDS)}, "
            f"got {kind!r}"
        )
    if column not in columns:
        raise DatasetError(
            f"{path}: task '{name}': no column '{column}' (columns: {', '.join(columns)})"
        )
    values = columns[column]
    what = f"task '{name}'"
    labels: list[str] | None = None
    if kind == "regression":
        target = _numbers(path, column, values, what).astype(np.float32)
        seen = target[train][~np.isnan(target[train])]
        if len(seen) == 0:
            raise DatasetError(
                f"{path}: task '{name}': column '{column}' has no value in the train split"
            )
        if "head" not in spec and "loss" not in spec:  # learn z, predict in the column's units
            mean, std = float(seen.mean()), float(seen.std()) or 1.0
            spec.update(
                loss=StandardizedMSE(std),
                head="standardized",
                head_params={"mean": mean, "std": std},
            )
        return Task(name, kind, **spec), target, None, column
    if kind == "binary":
        target = np.full(len(values), np.nan, dtype=np.float32)
        for i, value in enumerate(values):
            if _missing(value):
                continue
            text = str(value).strip().lower()
            flag = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0}.get(text)
            if flag is None:
                raise DatasetError(
                    f"{path}: column '{column}' ({what}), row {i + 1}: {value!r} is not a binary "
                    "label (0/1, true/false)"
                )
            target[i] = flag
        return Task(name, kind, **spec), target, None, column
    present = [str(v).strip() for v in values if not _missing(v)]
    integers = all(_is_int(v) for v in present)
    if integers:
        codes = [int(float(v)) if not _missing(v) else -100 for v in values]
        classes = max(codes) + 1 if present else 0
        if any(c < 0 and c != -100 for c in codes):
            row = next(i for i, c in enumerate(codes) if c < 0 and c != -100)
            raise DatasetError(
                f"{path}: column '{column}' ({what}), row {row + 1}: label {values[row]!r} is "
                "negative; labels are 0..C-1 (or strings)"
            )
    else:
        labels = sorted(set(present))
        index = {v: i for i, v in enumerate(labels)}
        codes = [index[str(v).strip()] if not _missing(v) else -100 for v in values]
        classes = len(labels)
    num_outputs = int(spec.pop("num_outputs", max(classes, 2)))
    if classes > num_outputs:
        raise DatasetError(
            f"{path}: task '{name}': column '{column}' has {classes} classes, more than "
            f"num_outputs={num_outputs}"
        )
    if not (np.asarray(codes)[train] != -100).any():
        raise DatasetError(
            f"{path}: task '{name}': column '{column}' has no label in the train split"
        )
    return Task(name, kind, num_outputs, **spec), np.asarray(codes, dtype=np.int64), labels, column


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except (TypeError, ValueError, OverflowError):
        return False


@DATASETS.register("tabular")
def tabular(
    path: str,
    tasks: Mapping[str, Any],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    split: Mapping[str, Any] | None = None,
    hidden: Sequence[int] = (64, 32),
) -> TableBundle:
    """A table's columns as features and tasks (module docstring); ``hidden``: the mlp
    encoder's layer sizes."""
    file = Path(path)
    columns = read_columns(file)
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        raise DatasetError(f"{file}: the table has no rows")
    if not tasks:
        raise DatasetError("dataset 'tabular': option 'tasks' must name at least one task")
    rows = _split_rows(file, columns, n, split or {})
    for name in SPLITS:
        if len(rows[name]) == 0:
            raise DatasetError(
                f"{file}: the {name} split is empty ({n} rows; change option 'split')"
            )
    built = [_task(file, name, spec, columns, rows["train"]) for name, spec in tasks.items()]
    used = {column for *_, column in built} | set(categorical)
    if split and "column" in split:
        used.add(split["column"])
    for column in [*(features or []), *categorical]:
        if column not in columns:
            raise DatasetError(
                f"{file}: no feature column '{column}' (columns: {', '.join(columns)})"
            )
    target_columns = {column: task.name for task, *_, column in built}
    clash = [c for c in [*(features or []), *categorical] if c in target_columns]
    if clash:
        raise DatasetError(
            f"{file}: column '{clash[0]}' is task '{target_columns[clash[0]]}''s target and "
            "cannot also be a feature"
        )
    numeric = list(features) if features is not None else [c for c in columns if c not in used]
    if not numeric and not categorical:
        raise DatasetError(f"{file}: no feature column left (every column is a task or the split)")
    x = (
        np.stack([_numbers(file, c, columns[c], "feature") for c in numeric], axis=1)
        if numeric
        else np.zeros((n, 0))
    )
    train_x = x[rows["train"]]
    seen = (~np.isnan(train_x)).sum(0)
    mean = np.nansum(train_x, 0) / np.maximum(seen, 1)  # training mean (0 if never seen)
    std = np.sqrt(np.nansum((train_x - mean) ** 2, 0) / np.maximum(seen, 1))
    std = np.where(std > 0, std, 1.0)
    x = np.where(np.isnan(x), mean, x)
    x = ((x - mean) / std).astype(np.float32)
    vocab = {}
    codes = []
    for c in categorical:
        train_values = {
            str(v).strip()
            for v in np.asarray(columns[c], dtype=object)[rows["train"]]
            if not _missing(v)
        }
        vocab[c] = sorted(train_values)
        index = {v: i + 1 for i, v in enumerate(vocab[c])}  # 0: missing or unseen
        codes.append([0 if _missing(v) else index.get(str(v).strip(), 0) for v in columns[c]])
    cat = np.asarray(codes, dtype=np.int64).T.reshape(n, len(categorical))

    def build(name: str) -> TensorSplit:
        idx = rows[name]
        targets = {task.name: torch.from_numpy(target[idx]) for task, target, *_ in built}
        if categorical:
            inputs: Any = {
                "numeric": torch.from_numpy(x[idx]),
                "categorical": torch.from_numpy(cat[idx]),
            }
        else:
            inputs = torch.from_numpy(x[idx])
        return TensorSplit(inputs, targets, name)

    encoder: dict[str, Any] = {"in_features": len(numeric), "hidden": list(hidden)}
    if categorical:
        encoder["cardinalities"] = [len(vocab[c]) + 1 for c in categorical]
    return TableBundle(
        file.stem,
        build("train"),
        build("val"),
        build("test"),
        [task for task, *_ in built],
        ("mlp", encoder),
        info={
            "rows": {s: len(rows[s]) for s in SPLITS},
            "labels": {task.name: labels for task, _, labels, _ in built if labels},
            "categories": vocab,
        },
        feature_names=numeric if not categorical else [],
    )


__all__ = ["TableBundle", "read_columns", "tabular"]
