"""From a run folder to predictions: load the trained model, predict to a file, export.

``mtlkit train`` writes ``model.json`` beside ``config.yaml``: the encoder the run built, its
tasks and the shape of one input. :func:`load_run` rebuilds the model from it and loads the
selected weights (``best/``, else the latest checkpoint) without loading any data.

- :func:`predict_file`: rows of a CSV, JSONL or Parquet file (Parquet needs the optional
  ``pyarrow``: ``pip install 'mtlkit[parquet]'``) → one column per task output (labels,
  or probabilities with ``probabilities=True``; regression values in the model's units);
- :func:`export_run`: ``torch.export`` (a ``.pt2`` program) or ONNX (``onnx`` and
  ``onnxscript``, extra ``onnx``), with a dynamic batch dimension.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor, nn

from mtlkit.config import RunConfig, parse_config
from mtlkit.errors import ConfigError, DatasetError, MissingExtraError, MtlkitError
from mtlkit.files import atomic_write_text, read_text
from mtlkit.plugins import import_plugins
from mtlkit.tasks import Task
from mtlkit.train.checkpoint import load_model_weights

if TYPE_CHECKING:
    from mtlkit.experiments.run import Run

SPEC_FILE = "model.json"
SPEC_VERSION = 1
#: task kinds with one output row per example, the ones a table of predictions can hold
ROW_KINDS = ("classification", "binary", "multilabel", "regression")
FORMATS = (".csv", ".jsonl", ".parquet")

__all__ = [
    "SPEC_FILE",
    "TrainedRun",
    "export_run",
    "load_run",
    "predict_file",
    "write_model_spec",
]


# ---------------------------------------------------------------------------- the spec


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _task_fields(task: Task) -> dict[str, Any]:
    out = {}
    for f in fields(task):
        value = getattr(task, f.name)
        if f.name == "loss" and callable(value):
            value = None  # a callable loss is not needed to predict
        out[f.name] = list(value) if f.name == "metrics" and value is not None else value
    return out


def write_model_spec(run_dir: Path, run: Run) -> None:
    """Write ``model.json``: what :func:`load_run` needs to rebuild the model without data.
    Nothing is written when a part cannot be stored as JSON (load_run then builds the run)."""
    from mtlkit.experiments.run import encoder_spec

    split = getattr(run.data, "split", None)  # one dataset per task: no single input
    x = split("train").inputs if callable(split) else None
    spec = {
        "version": SPEC_VERSION,
        "encoder": list(encoder_spec(run.config, run.data.encoder)),
        "tasks": [_task_fields(t) for t in run.tasks],
        "input": (
            {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch.")}
            if isinstance(x, Tensor)
            else None
        ),
        "feature_names": list(getattr(run.data, "feature_names", None) or []) or None,
    }
    if _jsonable(spec):
        atomic_write_text(Path(run_dir) / SPEC_FILE, json.dumps(spec, indent=2))


# ---------------------------------------------------------------------------- load_run


@dataclass
class TrainedRun:
    """A trained model and its tasks, from a run folder (:func:`load_run`).

    ``model`` is in eval mode on the CPU; ``input_shape`` and ``input_dtype`` describe one
    example (None when the model takes a dict of inputs); ``feature_names`` are the input
    columns of tabular data, when the dataset named them.
    """

    model: nn.Module
    tasks: list[Task]
    config: RunConfig
    input_shape: tuple[int, ...] | None = None
    input_dtype: torch.dtype = torch.float32
    feature_names: list[str] | None = None

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> dict[str, Tensor]:
        """The model's outputs for a batch of inputs, task → tensor."""
        out: dict[str, Tensor] = self.model(inputs)
        return out

    def example(self, batch: int = 2) -> Tensor:
        """A batch of zeros shaped like the model's input (for export)."""
        if self.input_shape is None:
            raise MtlkitError("this run's model takes a dict of inputs; no example input")
        return torch.zeros((batch, *self.input_shape), dtype=self.input_dtype)


def _read_config(run_dir: Path) -> RunConfig:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MtlkitError(f"{run_dir} is not a run folder (no config.yaml)")
    return parse_config(yaml.safe_load(saved.read_text(encoding="utf-8")))


def load_run(run_dir: str | Path) -> TrainedRun:
    """The trained model (selected weights: ``best/``, else the latest checkpoint) and its
    tasks, rebuilt from ``model.json`` without loading the training data. A run folder written
    before ``model.json`` existed is rebuilt through its config (which loads the data)."""
    from mtlkit.experiments.run import build_run, build_run_model

    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    import_plugins(config.imports)
    spec_file = run_dir / SPEC_FILE
    shape: tuple[int, ...] | None = None
    dtype = torch.float32
    names: list[str] | None = None
    if spec_file.is_file():
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        if spec.get("version") != SPEC_VERSION:
            raise MtlkitError(f"{spec_file}: unknown version {spec.get('version')!r}")
        tasks = [Task(**t) for t in spec["tasks"]]
        name, params = spec["encoder"]
        model = build_run_model(config, (name, params), tasks)
        if spec.get("input"):
            shape = tuple(spec["input"]["shape"])
            dtype = getattr(torch, spec["input"]["dtype"])
        names = spec.get("feature_names")
    else:
        run = build_run(config)
        model, tasks = run.model, run.tasks
    weights = run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "checkpoint"
    if not weights.is_dir():
        raise MtlkitError(f"{run_dir} has no trained weights (no best/ or checkpoint/)")
    load_model_weights(weights, model)
    model.eval()
    return TrainedRun(model, tasks, config, shape, dtype, names)


# ---------------------------------------------------------------------------- tables


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: unknown file type '{suffix}'; use {', '.join(FORMATS)}")
    return suffix


def _pyarrow(purpose: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError("pyarrow", "parquet", purpose) from None
    return pq


def read_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """The column names and rows of a CSV, JSONL or Parquet file."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    kind = _format(path)
    if kind == ".parquet":
        try:
            table = _pyarrow(f"reading {path}").read_table(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise DatasetError(f"{path} is not a Parquet file ({err})") from None
        columns = list(table.column_names)
        data = table.to_pydict()
        return columns, [list(r) for r in zip(*(data[c] for c in columns), strict=True)]
    if kind == ".csv":
        with io.StringIO(read_text(path, "input file", DatasetError), newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: the file is empty (no header row)")
            rows = list(reader)
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise DatasetError(
                    f"{path}: row {i + 2} has {len(row)} fields, the header {len(header)}"
                )
        return header, rows
    records = []
    for i, line in enumerate(read_text(path, "input file", DatasetError).splitlines()):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: line {i + 1} is not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}: line {i + 1} is not a JSON object")
            records.append(record)
    columns = list(records[0]) if records else []
    return columns, [[r.get(c) for c in columns] for r in records]


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write rows to a CSV, JSONL or Parquet file (by the file's extension)."""
    kind = _format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".parquet":
        import pyarrow as pa

        pq = _pyarrow(f"writing {path}")
        data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
        pq.write_table(pa.table(data), path)
    elif kind == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
    else:
        lines = [json.dumps(dict(zip(columns, r, strict=True))) for r in rows]
        atomic_write_text(path, "".join(line + "\n" for line in lines))


def _features(path: Path, trained: TrainedRun, columns: list[str], rows: list[list[Any]]) -> Tensor:
    """The input tensor of the rows: the run's feature columns, or every column in order."""
    if trained.input_shape is None:
        raise ConfigError(
            f"{path}: this run's model takes a dict of inputs; predict from a table needs a "
            "model with one tensor input (use mtlkit.load_run in Python)"
        )
    wanted = trained.feature_names or columns
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing input column(s) {', '.join(missing[:5])}")
    width = math.prod(trained.input_shape)
    if len(wanted) != width:
        raise DatasetError(
            f"{path}: {len(wanted)} input columns, the model takes {width} values per example "
            f"(shape {list(trained.input_shape)})"
        )
    index = [columns.index(c) for c in wanted]
    values = []
    for i, row in enumerate(rows):
        try:
            values.append([float(row[k]) for k in index])
        except (TypeError, ValueError):
            bad = next(k for k in index if not _is_number(row[k]))
            raise DatasetError(
                f"{path}: row {i + 1}, column '{columns[bad]}': {row[bad]!r} is not a number"
            ) from None
    x = torch.tensor(values, dtype=torch.float64).reshape(len(rows), *trained.input_shape)
    return x.to(trained.input_dtype)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _output_columns(task: Task, out: Tensor, probabilities: bool) -> Iterator[tuple[str, Tensor]]:
    """(column name, values) for one task's outputs of a batch."""
    name, kind = task.name, task.kind
    if kind == "classification":
        probs = out.float().softmax(dim=-1)
        if probabilities:
            for k in range(probs.shape[-1]):
                yield f"{name}_prob_{k}", probs[:, k]
        else:
            yield name, probs.argmax(dim=-1)
    elif kind in ("binary", "multilabel"):
        probs = torch.sigmoid(out.float()).reshape(out.shape[0], -1)
        for k in range(probs.shape[1]):
            col = name if probs.shape[1] == 1 else f"{name}_{k}"
            if probabilities:
                yield f"{col}_prob", probs[:, k]
            else:
                yield col, (probs[:, k] > 0.5).long()
    else:
        values = out.float().reshape(out.shape[0], -1)
        for k in range(values.shape[1]):
            yield (name if values.shape[1] == 1 else f"{name}_{k}"), values[:, k]


def predict_file(
    run_dir: str | Path,
    input_file: str | Path,
    output_file: str | Path,
    *,
    probabilities: bool = False,
    batch_size: int = 1024,
) -> int:
    """Predict every row of ``input_file`` into ``output_file`` (CSV, JSONL or Parquet, by
    extension); returns the number of rows. One column per task output: class labels (or
    ``<task>_prob_<k>`` with ``probabilities``), 0/1 for binary and multi-label tasks (or
    their probabilities), values for regression. Only tasks with one output per example
    (classification, binary, multilabel, regression) can be written as a table."""
    trained = load_run(run_dir)
    input_file, output_file = Path(input_file), Path(output_file)
    _format(output_file)
    per_pixel = [t.name for t in trained.tasks if t.kind not in ROW_KINDS]
    if per_pixel:
        raise ConfigError(
            f"task(s) {', '.join(per_pixel)} do not have one output per example, so they do "
            "not fit in a table; use mtlkit.load_run(RUN_DIR).predict(...) in Python"
        )
    columns, rows = read_table(input_file)
    if not rows:
        raise DatasetError(f"{input_file}: no rows to predict")
    x = _features(input_file, trained, columns, rows)
    out_columns: list[str] = []
    table: list[list[Any]] = []
    for start in range(0, len(rows), batch_size):
        outputs = trained.predict(x[start : start + batch_size])
        cols = [
            c for t in trained.tasks for c in _output_columns(t, outputs[t.name], probabilities)
        ]
        out_columns = [c for c, _ in cols]
        values = [v.tolist() for _, v in cols]  # labels stay int, the rest float
        table.extend([list(r) for r in zip(*values, strict=True)])
    write_table(output_file, out_columns, table)
    return len(table)


# ---------------------------------------------------------------------------- export


class _Exported(nn.Module):
    """The model with its outputs as a tuple in task order (what exporters keep names of)."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        self.model, self.tasks = model, list(tasks)

    def forward(self, inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.model(inputs)
        return tuple(out[t] for t in self.tasks)


def export_run(run_dir: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Export a run's trained model: ``fmt`` ``"torch-export"`` (``model.pt2``, load with
    ``torch.export.load``) or ``"onnx"`` (``model.onnx``, input ``inputs``, one output per
    task named after it; needs ``onnx`` and ``onnxscript``). The batch dimension is dynamic.
    Returns the written path."""
    trained = load_run(run_dir)
    names = [t.name for t in trained.tasks]
    wrapped = _Exported(trained.model, names).eval()
    example = trained.example(batch=2)
    batch = torch.export.Dim("batch", min=1)
    if fmt == "torch-export":
        path = Path(output) if output is not None else Path(run_dir) / "model.pt2"
        program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
        return path
    if fmt == "onnx":
        for package in ("onnx", "onnxscript"):
            try:
                __import__(package)
            except ImportError:
                raise MissingExtraError(package, "onnx", "mtlkit export --format onnx") from None
        path = Path(output) if output is not None else Path(run_dir) / "model.onnx"
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["inputs"],
            output_names=names,
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
        return path
    raise ConfigError(f"unknown export format '{fmt}'; use onnx or torch-export")
