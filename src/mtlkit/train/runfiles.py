"""Reading a run folder's files back, with checks: damage is an error naming the file.

``metrics.jsonl`` is appended one line per record; a run killed mid-write can leave a torn last
line, which is dropped (with a warning) when the run is resumed. A damaged line before the last
is an error. :func:`check_resumable` reads everything a resume needs before the run folder
is touched.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mtlkit.errors import MtlkitError
from mtlkit.train.checkpoint import CheckpointError, load_weights, read_newest_checkpoint


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn last line is dropped with a warning, any
    other unreadable line is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MtlkitError(f"{path} is damaged: not UTF-8 text (byte {err.start})") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):  # a write cut short by a crash
                warnings.warn(f"{path}: dropping the torn last line {number}", stacklevel=2)
                break
            raise MtlkitError(f"{path} is damaged at line {number}: {err}") from None
        records.append(record)
    return records


def check_resumable(run_dir: Path) -> int:
    """Read and check what resuming ``run_dir`` needs (its checkpoint, or the previous one,
    ``best/`` and ``metrics.jsonl``) without changing anything; the checkpoint's epoch."""
    _, _, state = read_newest_checkpoint(run_dir / "checkpoint")
    best = run_dir / "best" / "model.safetensors"
    if best.exists():
        try:
            load_weights(best)
        except CheckpointError as err:
            if int(state["best"]["epoch"]) != int(state["epoch"]):
                raise CheckpointError(
                    f"cannot resume {run_dir}: {err}, and the selected epoch "
                    f"{state['best']['epoch']} is not the checkpoint's"
                ) from None
    read_metrics(run_dir / "metrics.jsonl")
    return int(state["epoch"])


__all__ = ["check_resumable", "read_metrics"]
