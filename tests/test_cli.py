"""The command line: exit codes, no tracebacks for user errors, train/resume/eval/list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from mtlkit.cli import main
from tests.conftest import small_digits_config


def write_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "config.yaml"
    cfg = small_digits_config(**train)
    cfg["scheduler"] = {"name": "cosine"}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_list_shows_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("datasets", "architectures", "encoders", "heads", "metrics", "weighting methods"):
        assert kind in out
    assert "multidigits" in out and "ew" in out


def test_user_error_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"name": "multidigits"}, "train": {"epochs": -1}}))
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "mtlkit", "train", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "field 'train.epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_unknown_method_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = small_digits_config()
    cfg["weighting"] = {"name": "nope"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "unknown weighting method 'nope'; available:" in capsys.readouterr().err


def test_usage_error_exit_code() -> None:
    assert main(["train"]) == 2
    assert main(["eval", "/no/such/run"]) == 2


def test_train_resume_equals_straight_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, epochs=4)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["train", str(config), "--out", str(straight)]) == 0
    assert main(["train", str(config), "--out", str(broken), "--stop-after", "2"]) == 0
    assert json.loads((broken / "checkpoint" / "state.json").read_text())["s:epoch"] == 2
    assert main(["train", str(config), "--resume", str(broken)]) == 0
    for folder in ("checkpoint", "best"):
        a = load_file(str(straight / folder / "model.safetensors"))
        b = load_file(str(broken / folder / "model.safetensors"))
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), folder
    ra = json.loads((straight / "results.json").read_text())
    rb = json.loads((broken / "results.json").read_text())
    assert ra["test"] == rb["test"] and ra["val"] == rb["val"]
    assert ra["best_epoch"] == rb["best_epoch"]
    epochs = [
        json.loads(x)["epoch"]
        for x in (broken / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "epoch"
    ]
    assert epochs == [1, 2, 3, 4]


def test_resume_refuses_a_different_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, epochs=2)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--stop-after", "1"]) == 0
    assert main(["train", str(config), "--resume", str(run), "--set", "seed=5"]) == 2
    assert "differs from the saved one in seed" in capsys.readouterr().err


def test_eval_reproduces_results(tmp_path: Path) -> None:
    config = write_config(tmp_path, epochs=1)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    from mtlkit.experiments.run import evaluate_run

    assert evaluate_run(run, "test") == json.loads((run / "results.json").read_text())["test"]
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert main(["eval", str(run), "--split", "nope"]) == 2


def test_affinity_then_group_print_errors_robustness_and_the_stopping_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    out = tmp_path / "aff"
    args = ["--every", "1", "--min-measured", "3", "--max-measured", "6", "--out", str(out)]
    assert main(["affinity", str(path), *args]) == 0
    text = capsys.readouterr().out
    assert " ± " in text and "mean ± standard error" in text
    saved = json.loads((out / "affinity.json").read_text())
    assert 3 <= saved["steps"] <= 6 and saved["stop"] in ("precise", "max_measured")
    assert saved["version"] == 2 and len(saved["history"]) == saved["steps"]
    assert (
        main(
            [
                "group",
                str(path),
                "-k",
                "2",
                "--affinity",
                str(out / "affinity.json"),
                "--resamples",
                "20",
                "--out",
                str(tmp_path / "group"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "exhaustive search" in text and "bootstrap resamples" in text
    assert "(exact)" not in text
