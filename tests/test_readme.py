"""The README's "bring your own model" and "bring your own data" sections, run as written:
each Python block in a fresh process, each YAML config trained with ``mtlkit train``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.DOTALL)


def block(language: str, first_line: str) -> str:
    found = [b for lang, b in BLOCK.findall(README.read_text()) if lang == language]
    matching = [b for b in found if b.startswith(first_line)]
    assert len(matching) == 1, f"README: one {language} block starting {first_line!r}"
    return matching[0]


def run(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_plain_loop(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(block("python", "# bring your own model: a plain loop"))
    out = run(tmp_path, "loop.py")
    assert "'price'" in out and "'sold'" in out


def test_lightning(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    (tmp_path / "pl.py").write_text(block("python", "# bring your own model: Lightning"))
    out = run(tmp_path, "pl.py")
    assert "weight/price" in out and "loss/sold" in out
    assert list((tmp_path / "runs").rglob("*.ckpt"))


def test_hugging_face(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    (tmp_path / "hf.py").write_text(block("python", "# bring your own model: Hugging Face"))
    run(tmp_path, "hf.py")
    assert (tmp_path / "runs" / "hf").is_dir()


def test_a_table(tmp_path: Path) -> None:
    (tmp_path / "make.py").write_text(block("python", "# bring your own data: a table"))
    run(tmp_path, "make.py")
    (tmp_path / "houses.yaml").write_text(block("yaml", "# houses.yaml"))
    run(tmp_path, "-m", "mtlkit", "train", "houses.yaml", "--out", "runs/houses")
    test = json.loads((tmp_path / "runs" / "houses" / "results.json").read_text())["test"]
    assert test["price"]["r2"] > 0.8 and test["sold"]["accuracy"] > 0.8


def test_a_dataset_of_yours(tmp_path: Path) -> None:
    (tmp_path / "my_data.py").write_text(block("python", "# bring your own data: my_data.py"))
    (tmp_path / "squares.yaml").write_text(block("yaml", "# squares.yaml"))
    run(tmp_path, "-m", "mtlkit", "train", "squares.yaml", "--out", "runs/squares")
    test = json.loads((tmp_path / "runs" / "squares" / "results.json").read_text())["test"]
    assert test["big"]["accuracy"] > 0.7  # chance is about 0.6
