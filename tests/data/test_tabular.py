"""The ``tabular`` dataset: a CSV (or Parquet) file the test writes, read into features and
tasks; split rules; categorical columns; each bad input a clear error; trained from YAML."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data import load_dataset
from mtlkit.errors import DatasetError

TASKS = {"churn": {"kind": "binary"}, "segment": {"kind": "classification"}, "spend": "regression"}


def write_table(path: Path, n: int = 200, seed: int = 0, missing: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    age, income = rng.normal(40, 10, n), rng.normal(50, 20, n)
    city = rng.choice(["paris", "oslo", "rome"], n)
    rows = []
    for i in range(n):
        churn = int(age[i] + 5 * (city[i] == "oslo") > 42)
        segment = ["low", "mid", "high"][int(np.clip((income[i] - 30) // 15, 0, 2))]
        spend = round(0.5 * income[i] + rng.normal(), 3)
        rows.append(
            {
                "age": "" if missing and i == 3 else round(age[i], 3),
                "income": round(income[i], 3),
                "city": city[i],
                "churn": "" if missing and i == 5 else churn,
                "segment": segment,
                "spend": spend,
                "part": ["train", "train", "train", "val", "test"][i % 5],
            }
        )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_columns_become_features_and_tasks(tmp_path: Path) -> None:
    path = write_table(tmp_path / "customers.csv")
    data = load_dataset(
        "tabular",
        path=str(path),
        tasks=TASKS,
        features=["age", "income"],
        categorical=["city"],
        split={"column": "part"},
    )
    assert [t.name for t in data.tasks] == ["churn", "segment", "spend"]
    assert [t.kind for t in data.tasks] == ["binary", "classification", "regression"]
    assert data.tasks[1].num_outputs == 3 and data.info["labels"]["segment"] == [
        "high",
        "low",
        "mid",
    ]
    assert (len(data.train), len(data.val), len(data.test)) == (120, 40, 40)
    name, options = data.encoder
    assert name == "mlp" and options["in_features"] == 2 and options["cardinalities"] == [4]
    x = data.train.inputs
    assert x["numeric"].shape == (120, 2) and x["categorical"].dtype == torch.int64
    assert set(x["categorical"].unique().tolist()) == {1, 2, 3}  # 0 is kept for unseen
    # standardised with training statistics; the missing age took the training mean (0)
    assert x["numeric"].mean(0).abs().max() < 1e-5
    assert float(data.val.inputs["numeric"][0, 0]) == 0.0  # row 3 is the first val row
    churn = data.train.targets["churn"]
    assert churn.dtype == torch.float32 and torch.isnan(churn).sum() == 1  # row 5: no label
    assert torch.isnan(data.test.targets["churn"]).sum() == 0
    assert data.train.targets["segment"].dtype == torch.int64


def test_fraction_split_is_seeded(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.csv", missing=False)

    def load(seed: int):
        split = {"fractions": [0.6, 0.2, 0.2], "seed": seed}
        return load_dataset(
            "tabular",
            path=str(path),
            tasks={"spend": "regression"},
            features=["age", "income"],
            split=split,
        )

    a, b, c = load(0), load(0), load(1)
    assert (len(a.train), len(a.val), len(a.test)) == (120, 40, 40)
    assert torch.equal(a.train.targets["spend"], b.train.targets["spend"])
    assert not torch.equal(a.train.targets["spend"], c.train.targets["spend"])
    assert a.feature_names == ["age", "income"]
    # by default every column that is no task, categorical or split column is a feature
    default = load_dataset(
        "tabular",
        path=str(path),
        tasks={"spend": "regression", "segment": "classification"},
        categorical=["city"],
        split={"column": "part"},
    )
    assert default.encoder[1]["in_features"] == 3  # age, income, churn
    with pytest.raises(DatasetError, match=r"t.csv: column 'city' \(feature\), row 1: '\w+'"):
        load_dataset("tabular", path=str(path), tasks={"spend": "regression"})


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    columns: dict[str, list] = {}
    with write_table(tmp_path / "t.csv").open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                columns.setdefault(k, []).append(v)
    columns["income"] = [float(v) for v in columns["income"]]
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    data = load_dataset(
        "tabular",
        path=str(tmp_path / "t.parquet"),
        tasks=TASKS,
        features=["income"],
        categorical=["city"],
        split={"column": "part"},
    )
    assert len(data.train) == 120 and data.encoder[1]["cardinalities"] == [4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"tasks": {"churn": {"kind": "binary", "column": "nope"}}},
            r"t.csv: task 'churn': no column 'nope'",
        ),
        ({"tasks": {"churn": {"kind": "ranking"}}}, r"task 'churn': option 'kind' must be one of"),
        (
            {"tasks": {"city": "binary"}, "features": ["age"]},
            r"column 'city' \(task 'city'\), row 1: '\w+' is not a binary label",
        ),
        (
            {"tasks": {"spend": "regression"}, "features": ["city"]},
            r"column 'city' \(feature\), row 1: '\w+' is not a number",
        ),
        (
            {"tasks": {"spend": "regression"}, "features": ["spend"]},
            r"column 'spend' is task 'spend''s target",
        ),
        (
            {"tasks": {"spend": "regression"}, "features": ["age"], "split": {"column": "city"}},
            r"column 'city' holds",
        ),
        (
            {
                "tasks": {"spend": "regression"},
                "features": ["age"],
                "split": {"fractions": [0.5, 0.5]},
            },
            r"three positive fractions",
        ),
        (
            {
                "tasks": {"segment": {"kind": "classification", "num_outputs": 2}},
                "features": ["age"],
            },
            r"task 'segment': column 'segment' has 3 classes, more than num_outputs=2",
        ),
    ],
)
def test_bad_inputs_name_file_column_and_task(tmp_path: Path, options: dict, message: str) -> None:
    path = write_table(tmp_path / "t.csv")
    with pytest.raises(DatasetError, match=message):
        load_dataset("tabular", path=str(path), **{"split": {"column": "part"}, **options})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing.csv: no such file"):
        load_dataset("tabular", path=str(tmp_path / "missing.csv"), tasks={"a": "regression"})
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DatasetError, match=r"ragged.csv: row 3 has 1 fields, the header 2"):
        load_dataset("tabular", path=str(tmp_path / "ragged.csv"), tasks={"a": "regression"})
    (tmp_path / "t.xlsx").write_text("")
    with pytest.raises(DatasetError, match=r"unknown file type '.xlsx'"):
        load_dataset("tabular", path=str(tmp_path / "t.xlsx"), tasks={"a": "regression"})


def test_train_a_csv_from_yaml(tmp_path: Path) -> None:
    write_table(tmp_path / "customers.csv", n=400)
    (tmp_path / "config.yaml").write_text(
        "name: customers\n"
        "data:\n"
        "  name: tabular\n"
        "  batch_size: 32\n"
        "  params:\n"
        "    path: customers.csv\n"
        "    features: [age, income]\n"
        "    categorical: [city]\n"
        "    tasks: {churn: binary, segment: classification, spend: regression}\n"
        "    split: {column: part}\n"
        "train: {epochs: 15}\n"
        "optimizer: {name: adam, params: {lr: 0.01}}\n"
    )
    cli = [sys.executable, "-m", "mtlkit", "train", "config.yaml", "--out", "run"]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    # it learns (0.86, 0.73, 0.95 here): churn is a threshold of age and city (chance 0.5),
    # segment a binning of income (the largest class is 40 %), spend linear in income
    assert test["churn"]["accuracy"] > 0.75
    assert test["segment"]["accuracy"] > 0.6
    assert test["spend"]["r2"] > 0.8


def test_a_bad_column_is_exit_code_2(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv")
    (tmp_path / "config.yaml").write_text(
        "name: t\ndata: {name: tabular, params: {path: t.csv, tasks: {churn: {kind: binary, "
        "column: churned}}}}\n"
    )
    cli = [sys.executable, "-m", "mtlkit", "train", "config.yaml", "--out", "run"]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "t.csv: task 'churn': no column 'churned'" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
