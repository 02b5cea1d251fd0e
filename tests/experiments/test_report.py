"""The HTML report: every section present, plots embedded, and a clean render in chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from mtlkit.analysis import measure_affinity
from mtlkit.data import TensorLoader
from mtlkit.errors import MtlkitError
from mtlkit.experiments.compare import summarise
from mtlkit.experiments.report import SECTIONS, build_report
from mtlkit.train import Trainer
from mtlkit.weighting import get

from ..conftest import tiny_model, tiny_split, tiny_tasks


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "run"
    trainer = Trainer(
        tiny_model(),
        tiny_tasks(),
        get("pcgrad"),
        epochs=2,
        run_dir=folder,
        log_every=1,
        progress=False,
        monitor="cls/accuracy",
    )
    trainer.fit(TensorLoader(tiny_split(64), 16), TensorLoader(tiny_split(32, 1, "val"), 32))
    (folder / "config.yaml").write_text("name: tiny\nseed: 0\n")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    aff = measure_affinity(
        model, tiny_tasks(), get("ew"), TensorLoader(tiny_split(64), 16), optimizer=opt, every=1
    )
    aff.save(folder / "affinity")
    stl = {0: {"cls": {"accuracy": 0.5}}}
    summary = summarise(stl, {"ew@hps": {0: {"cls": {"accuracy": 0.6}}}}) | {"seeds": [0]}
    (folder / "compare.json").write_text(json.dumps(summary))
    return folder


def test_report_has_every_section_with_data(run_dir: Path) -> None:
    page = build_report(run_dir).read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "Not available" not in page
    assert page.count("data:image/png;base64,") == 4  # curves, weights, cosines, affinity
    assert "cls/reg" in page  # the cosine table names the pair
    assert "MTL (ew@hps) beats STL on 1 of 1 tasks" in page
    assert "name: tiny" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_missing_parts_say_how_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    page = build_report(tmp_path, tmp_path / "r.html").read_text()
    assert page.count("Not available") == 5
    assert "mtlkit affinity" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MtlkitError, match="holds no run"):
        build_report(empty)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path) -> tuple[str, str]:
    """DOM after load and chromium's log (console messages appear as CONSOLE lines)."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=3000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(run_dir: Path, tmp_path: Path) -> None:
    dom, log = render(build_report(run_dir))
    assert 'data-rendered="yes"' in dom, log[-2000:]
    assert 'data-images="4/4"' in dom  # every embedded plot decoded
    for key in SECTIONS:
        assert f'id="{key}"' in dom
    assert console_errors(log) == []
    # the check can fail: a page with a console error is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("broken")</script></body></html>')
    assert any("broken" in line for line in console_errors(render(bad)[1]))
