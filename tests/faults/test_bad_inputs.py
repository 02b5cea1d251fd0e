"""A table of bad inputs (config, CLI, data, API): each exits 2 with a message naming what is
wrong, without a traceback, and writes no run folder."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mtlkit.cli import main
from mtlkit.data import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from tests.conftest import small_digits_config


def _bundle(name: str, x_train: torch.Tensor, y_train: torch.Tensor) -> DataBundle:
    def split(x: torch.Tensor, y: torch.Tensor, s: str) -> TensorSplit:
        return TensorSplit(x, {"t": y}, s)

    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    return DataBundle(
        name,
        split(x_train, y_train, "train"),
        split(x, y, "val"),
        split(x, y, "test"),
        [Task("t", "classification", 2)],
        ("mlp", {"in_features": 4, "hidden": [4]}),
    )


@DATASETS.register("_test_nan_feature")
def _nan_feature() -> DataBundle:
    x = torch.randn(8, 4)
    x[5, 2] = math.nan
    return _bundle("_test_nan_feature", x, torch.randint(0, 2, (8,)))


@DATASETS.register("_test_no_labels")
def _no_labels() -> DataBundle:
    return _bundle("_test_no_labels", torch.randn(8, 4), torch.full((8,), -100))


def tiny(**changes: Any) -> dict[str, Any]:
    cfg = small_digits_config(epochs=1)
    cfg["data"]["params"] = {"n_train": 64, "n_val": 32, "n_test": 32}
    for key, value in changes.items():
        cfg[key] = value
    return cfg


NO_CUDA = not torch.cuda.is_available()

# (id, config mapping or raw bytes, extra CLI args, message fragment)
CASES: list[tuple[str, Any, list[str], str]] = [
    (
        "lr-not-a-number",
        tiny(optimizer={"name": "adam", "params": {"lr": "abc"}}),
        [],
        "optimizer 'adam': option 'lr'",
    ),
    (
        "duplicate-key",
        b"name: a\ndata: {name: multidigits}\nname: b\n",
        [],
        "found key 'name' twice",
    ),
    ("not-utf8", b"name: \xff\xfe\n", [], "is not UTF-8"),
    ("not-a-mapping", b"- 1\n- 2\n", [], "must be a mapping"),
    ("huge-seed", tiny(seed=10**30), [], "field 'seed'"),
    ("name-escapes-runs", tiny(), ["--set", "name=../../x"], "not a usable run name"),
    (
        "set-bad-int",
        tiny(),
        ["--set", "data.params.n_train=abc"],
        "dataset 'multidigits': option 'n_train'",
    ),
    ("set-unparsable", tiny(), ["--set", "train.epochs=[1"], "cannot parse the value"),
    ("set-no-key", tiny(), ["--set", "=3"], "--set expects KEY=VALUE"),
    ("set-into-a-value", tiny(), ["--set", "seed.x=3"], "'seed' is not a section"),
    ("stop-after-0", tiny(), ["--stop-after", "0"], "--stop-after must be ≥ 1"),
    ("resume-and-overwrite", tiny(), ["--resume", "{out}", "--overwrite"], "--overwrite"),
    (
        "device-unknown",
        tiny(train={"epochs": 1, "device": "gpu"}),
        [],
        "field 'train.device': 'gpu' is not a device",
    ),
    (
        "nan-feature",
        tiny(data={"name": "_test_nan_feature"}, model={}),
        [],
        "train split: input 'inputs' has non-finite values (NaN or inf), first in sample 5",
    ),
    (
        "no-labels",
        tiny(data={"name": "_test_no_labels"}, model={}),
        [],
        "task 't' has no label at all",
    ),
    ("unknown-method", tiny(weighting={"name": "nope"}), [], "unknown weighting method 'nope'"),
]
if NO_CUDA:
    CASES.append(
        (
            "cuda-without-cuda",
            tiny(train={"epochs": 1, "device": "cuda"}),
            [],
            "device 'cuda' is not available (this torch has no CUDA support)"
            if torch.version.cuda is None
            else "device 'cuda' is not available",
        ),
    )


@pytest.mark.parametrize(
    ("config", "args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_exits_2_naming_the_fault(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: Any,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_bytes(config if isinstance(config, bytes) else yaml.safe_dump(config).encode())
    out = tmp_path / "out"
    args = [a.replace("{out}", str(out)) for a in args]
    if "--resume" not in args:
        args += ["--out", str(out)]
    assert main(["train", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "runs").exists()  # nothing written


def test_default_run_folder_is_not_created_for_a_rejected_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny(weighting={"name": "nope"})))
    assert main(["train", str(path)]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_second_run_into_a_folder_is_refused_and_overwrite_moves_it_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    before = (out / "results.json").read_bytes()
    assert main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before
    with pytest.warns(UserWarning, match="moved it to"):
        assert main(["train", str(path), "--out", str(out), "--overwrite"]) == 0
    (aside,) = tmp_path.glob("run.old-*")
    assert (aside / "results.json").read_bytes() == before
    epochs = [yaml.safe_load(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]  # one run's records, not two


def test_tune_refuses_an_output_folder_its_database_url_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("optuna")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert main(["tune", str(path), "--trials", "1", "--out", str(tmp_path / "a?b")]) == 2
    assert "contains ?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]


def test_api_errors_name_the_field() -> None:
    from mtlkit.config import load_yaml, parse_config
    from mtlkit.train.batches import resolve_device

    cfg = parse_config(
        load_yaml("data: {name: multidigits}\noptimizer: {name: adam, params: {lr: 1e-4}}")
    )
    assert cfg.optimizer.params["lr"] == 1e-4  # a float, as YAML 1.2 reads it
    with pytest.raises(ConfigError, match=r"field 'train\.device'"):
        resolve_device("tpu:x")
    from mtlkit.experiments.run import train_run

    with pytest.raises(ConfigError, match="stop_after must be ≥ 1"):
        train_run(parse_config(tiny()), Path("unused"), stop_after=0)
    assert not Path("unused").exists()


def test_nan_monitor_is_no_improvement_with_a_warning() -> None:
    from torch import nn

    from mtlkit.train.selection import Monitor, Selection

    selection = Selection(Monitor("loss"))
    model = nn.Linear(1, 1)
    assert selection.update(2.0, 1, model) is not None
    with pytest.warns(RuntimeWarning, match="epoch 2: the monitored value 'loss' is nan"):
        assert selection.update(math.nan, 2, model) is None
    assert (selection.best_epoch, selection.bad_epochs) == (1, 1)
    assert selection.update(1.0, 3, model) is not None and selection.best_epoch == 3


def test_ctrl_c_prints_how_to_resume(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    code = (
        "import sys, torch; from mtlkit.train import trainer as t; from mtlkit.cli import main\n"
        "orig = t.Trainer._run_epoch\n"
        "def stop(self, *a):\n"
        "    r = orig(self, *a)\n"
        "    raise KeyboardInterrupt\n"
        "t.Trainer._run_epoch = stop\n"
        f"sys.exit(main(['train', {str(path)!r}, '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=120,
    )
    assert proc.returncode == 130
    assert f"--resume {out}" in proc.stderr and "epoch 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / ".lock").exists()
    assert not list(out.glob(".*.tmp"))


def test_a_data_file_that_is_not_utf8_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.csv").write_bytes(b"x,y\n1,2\n3,\xe9\n")
    cfg = tiny(
        data={"name": "tabular", "params": {"path": "table.csv", "tasks": {"y": "regression"}}}
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "table.csv is not UTF-8 text (line 3, byte 10" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
