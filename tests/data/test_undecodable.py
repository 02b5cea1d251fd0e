"""Every built-in reader turns a file that is not UTF-8 (or is empty where that is an error)
into a DatasetError or ConfigError naming the file, never a UnicodeDecodeError traceback."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mtlkit.data.base import load_dataset
from mtlkit.data.coco.io import read_coco
from mtlkit.data.conll import read_conll2003, read_conllu
from mtlkit.data.glue import GLUE_FORMATS, read_tsv
from mtlkit.data.qm9 import read_molecules
from mtlkit.data.tabular import read_columns
from mtlkit.errors import ConfigError, DatasetError, MtlkitError
from mtlkit.experiments.inference import read_table

# Valid UTF-8 up to line 2, then a Latin-1 "é" (0xE9) and a stray 0xFF.
BAD = b"first line\nsecond \xe9t\xff\n"


def _qm9(path: Path) -> Any:
    return read_molecules(path.parent)


def _python(path: Path) -> Any:
    return load_dataset("python", factory=f"{path}:make")


def _tabular(path: Path) -> Any:
    return load_dataset("tabular", path=str(path), tasks={"y": "regression"})


# (id, file name, reader, error type, the reader rejects an empty file too)
READERS: list[tuple[str, str, Callable[[Path], Any], type[MtlkitError], bool]] = [
    ("conllu", "train.conllu", read_conllu, DatasetError, False),
    ("conll2003", "train.txt", read_conll2003, DatasetError, False),
    ("glue-tsv", "train.tsv", lambda p: read_tsv(p, GLUE_FORMATS["rte"]), DatasetError, True),
    ("qm9-csv", "qm9_part1.csv", _qm9, DatasetError, True),
    ("coco-json", "instances.json", read_coco, DatasetError, True),
    ("tabular-csv", "table.csv", read_columns, DatasetError, True),
    ("tabular-dataset", "table.csv", _tabular, DatasetError, True),
    ("tabular-parquet", "table.parquet", read_columns, DatasetError, True),
    ("predict-csv", "inputs.csv", read_table, DatasetError, True),
    ("predict-jsonl", "inputs.jsonl", read_table, DatasetError, False),
    ("predict-parquet", "inputs.parquet", read_table, DatasetError, True),
    ("python-factory", "factory.py", _python, ConfigError, True),
]
NEEDS = {"tabular-parquet": "pyarrow", "predict-parquet": "pyarrow", "conllu": "conllu"}


def _cases() -> list[Any]:
    cases = []
    for name, file, reader, error, empty_fails in READERS:
        marks = []
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            marks.append(pytest.mark.skip(reason=f"needs {NEEDS[name]}"))
        contents = [("not-utf8", BAD)] + ([("empty", b"")] if empty_fails else [])
        for kind, data in contents:
            cases.append(pytest.param(file, reader, error, data, id=f"{name}-{kind}", marks=marks))
    return cases


@pytest.mark.parametrize(("file", "reader", "error", "data"), _cases())
def test_a_bad_file_is_an_error_naming_it(
    tmp_path: Path,
    file: str,
    reader: Callable[[Path], Any],
    error: type[MtlkitError],
    data: bytes,
) -> None:
    path = tmp_path / file
    path.write_bytes(data)
    with pytest.raises(error) as caught:
        reader(path)
    message = str(caught.value)
    assert str(path) in message
    if data == BAD and not file.endswith((".parquet", ".py")):
        assert "not UTF-8" in message and "line 2, byte 18" in message
