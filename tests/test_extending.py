"""docs/extending.md, run as written: its Python blocks become components.py, its YAML block
config.yaml, and ``mtlkit train`` (in a fresh process, so nothing registers here) trains the toy
dataset, task kind, architecture and weighting method through the public API only."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.DOTALL)


def blocks(language: str, first_line: str) -> list[str]:
    found = [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == language]
    return [b for b in found if b.startswith(first_line)]


def test_the_guide_has_every_recipe() -> None:
    code = "".join(blocks("python", "# components.py"))
    for registration in (
        "DATASETS.register",
        "TASK_KINDS.register",
        "LOSSES.register",
        "@metric(",
        "ARCHITECTURES.register",
        "WEIGHTINGS.register",
    ):
        assert registration in code
    assert len(blocks("yaml", "# config.yaml")) == 1


def test_the_recipes_train_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "components.py").write_text("\n\n".join(blocks("python", "# components.py")))
    (tmp_path / "config.yaml").write_text(blocks("yaml", "# config.yaml")[0])
    cli = [sys.executable, "-m", "mtlkit", "train", "config.yaml", "--out", "run"]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    text = json.dumps(results)
    assert "poisson_deviance" in text
    assert results["test"]["sign"]["accuracy"] >= 0.65  # it learns: 0.5 is chance, 0.72 here
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "weight/counts" in logged and "weight/sign" in logged


def test_a_missing_import_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "name: x\nimports: [no_such_module_here]\ndata: {name: multidigits}\n"
    )
    cli = [sys.executable, "-m", "mtlkit", "train", "config.yaml", "--out", "run"]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "field 'imports': no module named 'no_such_module_here'" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("entry", ["missing.py", "broken.py"])
def test_bad_import_files_name_the_entry(tmp_path: Path, entry: str) -> None:
    from mtlkit.errors import ConfigError
    from mtlkit.plugins import import_plugins

    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=rf"field 'imports': .*{entry}"):
        import_plugins([str(tmp_path / entry)])
