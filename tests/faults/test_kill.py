"""kill -9 at random points of an epoch and at every step of a checkpoint write: the resumed
run ends bit-identical to an uninterrupted one, or the resume is refused with a message."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import small_digits_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONWARNINGS": "default"}


def config(tmp: Path) -> Path:
    cfg = small_digits_config(epochs=3)
    cfg["data"]["params"] = {"n_train": 192, "n_val": 64, "n_test": 64}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mtlkit(*args: str, point: str = "none", n: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.faults._runner", point, str(n), "--", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config(tmp)
    proc = mtlkit("train", str(cfg), "--out", str(tmp / "run"))
    assert proc.returncode == 0, proc.stderr
    return cfg, tmp / "run"


def assert_same_run(a: Path, b: Path) -> None:
    for folder in ("checkpoint", "best"):
        x = load_file(str(a / folder / "model.safetensors"))
        y = load_file(str(b / folder / "model.safetensors"))
        assert x.keys() == y.keys()
        assert all((x[k] == y[k]).all() for k in x), folder
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert (ra["val"], ra["test"], ra["best_epoch"]) == (rb["val"], rb["test"], rb["best_epoch"])
    epochs = [
        json.loads(line)["epoch"]
        for line in (b / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "epoch"
    ]
    assert epochs == [1, 2, 3]


def resume_and_compare(cfg: Path, run: Path, reference: Path, strict: bool = False) -> None:
    proc = mtlkit("train", str(cfg), "--resume", str(run))
    if proc.returncode == 2 and not strict:  # refused: it must say why, without a traceback
        assert "cannot resume" in proc.stderr and "Traceback" not in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, run)


@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("save_file", 3),  # epoch 1's checkpoint, state.safetensors (best/ came first): none yet
        ("save_file", 6),  # epoch 2's checkpoint, during state.safetensors
        ("replace", 2),  # epoch 2: checkpoint/ moved to checkpoint.prev, the new one not in
        ("replace", 5),  # epoch 3: the same, with the oldest one being dropped
    ],
)
def test_kill_during_checkpoint_write(
    tmp_path: Path, reference: tuple[Path, Path], point: str, n: int
) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    proc = mtlkit("train", str(cfg), "--out", str(run), point=point, n=n)
    assert proc.returncode == -signal.SIGKILL
    if (point, n) == ("save_file", 3):
        proc = mtlkit("train", str(cfg), "--resume", str(run))
        assert proc.returncode == 2 and "no checkpoint" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        return
    resume_and_compare(cfg, run, ref, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_at_a_random_point_of_an_epoch(
    tmp_path: Path, reference: tuple[Path, Path], seed: int
) -> None:
    cfg, ref = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlkit", "train", str(cfg), "--out", str(run)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoint").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: nothing to resume
        assert_same_run(ref, run)
        return
    resume_and_compare(cfg, run, ref)
