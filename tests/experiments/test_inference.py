"""From a run folder to predictions: load_run without data, predict to a file, export."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

import mtlkit
from mtlkit.cli import main
from mtlkit.data import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import ConfigError
from mtlkit.experiments.inference import export_run, predict_file
from mtlkit.tasks import Task
from tests.conftest import small_digits_config

#: how many times the dataset below was loaded
LOADS = {"count": 0}
FEATURES = [f"x{i}" for i in range(5)]


@DATASETS.register("inference_toy")
def inference_toy(seed: int = 0) -> DataBundle:
    """Five features; a 3-class label, a binary label and a regression target."""
    LOADS["count"] += 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 5, generator=g)
    targets = {
        "kind": (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long(),
        "flag": (x[:, 2] > 0).float(),
        "size": x[:, 3] * 2 + x[:, 4],
    }

    def split(a: int, b: int, name: str) -> TensorSplit:
        return TensorSplit(x[a:b], {t: v[a:b] for t, v in targets.items()}, name)

    tasks = [
        Task("kind", "classification", num_outputs=3),
        Task("flag", "binary"),
        Task("size", "regression"),
    ]
    return DataBundle(
        "inference_toy",
        split(0, 96, "train"),
        split(96, 128, "val"),
        split(128, 160, "test"),
        tasks,
        encoder=("mlp", {"in_features": 5, "hidden": [16]}),
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("inference")
    config = {
        "name": "toy",
        "seed": 0,
        "data": {"name": "inference_toy", "batch_size": 32},
        "model": {"architecture": "hps"},
        "train": {"epochs": 2, "monitor": "loss"},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp / "config.yaml"), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def _rows(n: int = 7) -> list[list[float]]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=g).tolist()


def test_load_run_needs_no_data(run_dir: Path) -> None:
    before = LOADS["count"]
    trained = mtlkit.load_run(run_dir)
    assert LOADS["count"] == before  # the data was not loaded
    assert [t.name for t in trained.tasks] == ["kind", "flag", "size"]
    assert trained.input_shape == (5,)
    x = torch.tensor(_rows())
    out = trained.predict(x)
    assert out["kind"].shape == (7, 3)
    # the same model as evaluation uses: results.json's test loss is reproduced
    results = json.loads((run_dir / "results.json").read_text())
    data = inference_toy()
    xt, yt = data.split("test")[:]
    with torch.no_grad():
        loss = trained.tasks[2].compute_loss(trained.predict(xt)["size"], yt["size"])
    assert float(loss) == pytest.approx(results["test"]["size"]["loss"], rel=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_writes_one_column_per_task_output(
    run_dir: Path, tmp_path: Path, suffix: str
) -> None:
    rows = _rows()
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FEATURES)
        writer.writerows(rows)
    target = tmp_path / f"out{suffix}"
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(target)]) == 0
    if suffix == ".csv":
        with target.open() as f:
            got = list(csv.DictReader(f))
    else:
        got = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(got) == 7
    assert set(got[0]) == {"kind", "flag", "size"}
    out = mtlkit.load_run(run_dir).predict(torch.tensor(rows))
    assert [int(r["kind"]) for r in got] == out["kind"].argmax(-1).tolist()
    assert [int(r["flag"]) for r in got] == (out["flag"].reshape(-1) > 0).long().tolist()
    sizes = torch.tensor([float(r["size"]) for r in got], dtype=torch.float64)
    torch.testing.assert_close(sizes, out["size"].reshape(-1).double(), rtol=1e-6, atol=1e-6)


def test_predict_probabilities_from_jsonl(run_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps(dict(zip(FEATURES, r, strict=True))) + "\n" for r in _rows(3))
    )
    target = tmp_path / "out.jsonl"
    assert predict_file(run_dir, source, target, probabilities=True) == 3
    record = json.loads(target.read_text().splitlines()[0])
    assert set(record) == {"kind_prob_0", "kind_prob_1", "kind_prob_2", "flag_prob", "size"}
    assert sum(record[f"kind_prob_{k}"] for k in range(3)) == pytest.approx(1.0)


def test_predict_errors_name_the_file_and_column(run_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("x0,x1,x2,x3,x4\n1,2,3,oops,5\n")
    with pytest.raises(mtlkit.MtlkitError, match=r"bad.csv: row 1, column 'x3': 'oops'"):
        predict_file(run_dir, source, tmp_path / "out.csv")
    source.write_text("x0,x1,x2\n1,2,3\n")
    with pytest.raises(mtlkit.MtlkitError, match=r"bad.csv: 3 input columns, the model takes 5"):
        predict_file(run_dir, source, tmp_path / "out.csv")
    with pytest.raises(ConfigError, match=r"unknown file type '\.xlsx'"):
        predict_file(run_dir, source, tmp_path / "out.xlsx")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_the_extra(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.parquet").write_bytes(b"")
    with pytest.raises(mtlkit.MtlkitError, match=r"mtlkit\[parquet\]"):
        predict_file(run_dir, tmp_path / "in.parquet", tmp_path / "out.csv")


def test_torch_export_runs_like_the_model(run_dir: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--format",
                "torch-export",
                "--output",
                str(tmp_path / "m.pt2"),
            ]
        )
        == 0
    )
    program = torch.export.load(str(tmp_path / "m.pt2"))
    x = torch.tensor(_rows(5))  # another batch size than the export's example
    got = program.module()(x)
    expected = mtlkit.load_run(run_dir).predict(x)
    for k, name in enumerate(["kind", "flag", "size"]):
        torch.testing.assert_close(got[k], expected[name])


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None
    or importlib.util.find_spec("onnxscript") is None,
    reason="the onnx extra is not installed",
)
def test_onnx_export_runs_like_the_model(run_dir: Path, tmp_path: Path) -> None:
    import onnxruntime

    path = export_run(run_dir, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.tensor(_rows(5))
    outputs = session.run(None, {"inputs": x.numpy()})
    names = [o.name for o in session.get_outputs()]
    assert names == ["kind", "flag", "size"]
    expected = mtlkit.load_run(run_dir).predict(x)
    for name, value in zip(names, outputs, strict=True):
        torch.testing.assert_close(torch.from_numpy(value), expected[name], rtol=1e-5, atol=1e-5)


def test_export_an_image_model(tmp_path: Path) -> None:
    """A CNN run (MultiDigits): the input shape comes from model.json."""
    cfg = small_digits_config(epochs=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    trained = mtlkit.load_run(tmp_path / "run")
    path = export_run(tmp_path / "run", "torch-export")
    x = torch.randn(3, *trained.input_shape)
    got = torch.export.load(str(path)).module()(x)
    expected = trained.predict(x)
    for k, task in enumerate(trained.tasks):
        torch.testing.assert_close(got[k], expected[task.name])
