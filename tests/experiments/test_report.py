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
from mtlkit.tasks import half_width
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
    val = TensorLoader(tiny_split(32, 1, "val"), 32)
    fit = trainer.fit(TensorLoader(tiny_split(64), 16), val)
    results = {
        "best_epoch": fit.best_epoch,
        "monitor": {"name": "cls/accuracy", "value": fit.best_value},
        "val": trainer.evaluate(val),
        "test": trainer.evaluate(TensorLoader(tiny_split(32, 2, "test"), 32)),
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "config.yaml").write_text("name: tiny\nseed: 0\n")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    aff = measure_affinity(
        model,
        tiny_tasks(),
        get("ew"),
        TensorLoader(tiny_split(64), 16),
        optimizer=opt,
        every=1,
        epochs=1,
    )
    aff.save(folder / "affinity")
    stl = {0: {"cls": {"accuracy": 0.5}}}
    summary = summarise(stl, {"ew@hps": {0: {"cls": {"accuracy": 0.6}}}}) | {"seeds": [0]}
    (folder / "compare.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A comparison folder: two seeds of one MTL model (its runs under runs/) and the summary."""
    folder = tmp_path_factory.mktemp("report") / "compare"
    test = {}
    for seed in (0, 1):
        trainer = Trainer(
            tiny_model(seed),
            tiny_tasks(),
            get("mgda"),
            epochs=3,
            seed=seed,
            run_dir=folder / "runs" / f"mgda-hps-seed{seed}",
            log_every=1,
            progress=False,
        )
        trainer.fit(TensorLoader(tiny_split(64), 16), TensorLoader(tiny_split(32, 1), 32))
        test[seed] = trainer.evaluate(TensorLoader(tiny_split(32, 2), 32))
    metrics = {
        s: {t: {m: v for m, v in ms.items() if m != "loss"} for t, ms in r.items()}
        for s, r in test.items()
    }
    stl = {
        s: {
            t: {m: v * 0.9 if m == "accuracy" else v * 1.1 for m, v in ms.items()}
            for t, ms in r.items()
        }
        for s, r in metrics.items()
    }
    costs = {
        "stl": {
            "models": 1,
            "params": 1000,
            "train_seconds": 2.0,
            "latency_ms": 0.5,
            "throughput": 64000.0,
            "peak_memory_mb": None,
        },
        "mgda@hps": {
            "models": 1,
            "params": 900,
            "train_seconds": 1.5,
            "latency_ms": 0.4,
            "throughput": 80000.0,
            "peak_memory_mb": None,
        },
    }
    summary = summarise(stl, {"mgda@hps": metrics}, efficiency=costs)
    summary |= {"seeds": [0, 1], "config": {"name": "c"}}
    (folder / "compare.json").write_text(json.dumps(summary))
    return folder


def test_report_has_every_section_with_data(run_dir: Path) -> None:
    page = build_report(run_dir).read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "Not available" not in page
    # curves (one figure per task), weights, cosines, three heatmaps, comparison charts
    assert page.count("data:image/png;base64,") == 2 + 1 + 1 + 3 + 1
    assert "<td>run</td><td>cls/reg</td>" in page  # the cosine table names run and pair
    results = json.loads((run_dir / "results.json").read_text())
    assert f"Selected epoch: <b>{results['best_epoch']}</b> of 2" in page
    assert f"<td>{results['test']['reg']['mae']:.4f}</td>" in page  # the test-metrics table
    assert "MTL (ew@hps) vs STL: Δm +20.00 % (interval n/a: one seed)" in page
    assert "undecided: one seed cannot decide" in page
    assert "name: tiny" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_a_comparison_draws_every_model_over_its_seeds_and_delta_m(compare_dir: Path) -> None:
    page = build_report(compare_dir).read_text()
    assert "mean over its seeds, with a band" in page
    assert "95 % confidence intervals, t over 2 seeds, paired by seed" in page
    assert "t over 2 seeds, paired by seed; primary metrics" in page  # the verdict
    assert "Cost: STL sums its T models" in page
    assert "<td>mgda@hps</td><td>1</td><td>900</td><td>1.5</td><td>0.40</td>" in page
    assert "<td>80,000</td><td>n/a</td>" in page  # no peak memory off CUDA
    assert "(mean of 2 seeds)" not in page  # the captions are drawn in the images
    assert "mgda@hps, seed 0" in page and "mgda@hps, seed 1" in page  # the cosine table
    assert page.count("Not available") == 2  # no results.json of one run, no affinity


def test_image_pixels_and_labels(run_dir: Path, compare_dir: Path) -> None:
    """What the plots are made of: the model labels, integer epochs, a big enough heatmap."""
    import matplotlib.pyplot as plt

    from mtlkit.analysis.affinity import heatmap_png
    from mtlkit.experiments import report

    models = report._models(compare_dir, comparison=True)
    assert list(models) == ["mgda@hps"] and [s for s, _ in models["mgda@hps"]] == [0, 1]
    assert report._model_and_seed("stl-cls-seed3") == ("STL", 3)
    assert report._model_and_seed("imtl_g-mmoe-seed0") == ("imtl_g@mmoe", 0)
    assert half_width(1.0, 2) == pytest.approx(12.706 / 2**0.5, rel=1e-3)
    assert half_width(1.0, 1) == 0.0
    path = run_dir / "heat.png"
    heatmap_png(torch.tensor([[1.0, -0.5], [0.2, 1.0]]).numpy(), ["a", "b"], "cosine", path)
    height, width = plt.imread(path).shape[:2]
    assert min(height, width) >= 500


def test_heatmap_annotations_contrast_and_scales() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtlkit.analysis.affinity import draw_heatmap

    fig, ax = plt.subplots()
    m = torch.tensor([[1.0, -0.95, 0.0], [0.9, 1.0, 0.05], [0.1, 0.2, 1.0]]).numpy()
    image = draw_heatmap(ax, m, ["a", "b", "c"], "cosine")
    assert image.norm.vmin == -1.0 and image.norm.vmax == 1.0  # diverging, centred at 0
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert texts["-0.95"] == "white" and texts["0.9"] == "white"  # dark ends: white text
    assert texts["0"] == "black"  # the light centre: black text
    assert [t.get_text() for t in ax.texts].count("—") == 3  # the diagonal is masked
    assert image.get_array().mask.diagonal().all()
    assert ax.get_xlabel() and ax.get_ylabel()
    ax.clear()
    image = draw_heatmap(ax, m.clip(0, 1), ["a", "b", "c"], "conflict")
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    assert image.get_cmap().name == "viridis"  # sequential for a share in [0, 1]
    plt.close(fig)


def test_missing_parts_say_how_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    page = build_report(tmp_path, tmp_path / "r.html").read_text()
    assert page.count("Not available") == 6
    assert "mtlkit affinity" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MtlkitError, match="holds no run"):
        build_report(empty)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """DOM after load and chromium's log (console messages appear as CONSOLE lines); with
    ``screenshot``, also a 1300 px wide PNG of the page."""
    shot = [f"--screenshot={screenshot}", "--window-size=1300,7000"] if screenshot else []
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
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=3000",
                *(shot or ["--dump-dom"]),
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def check_page(page: Path, images: int, available: set[str], shot: Path) -> None:
    """Rendered without console errors, every section present, the expected ones with data,
    every image decoded, and a screenshot that is not blank."""
    import matplotlib.pyplot as plt

    dom, log = render(page)
    assert 'data-rendered="yes"' in dom, log[-2000:]
    assert f'data-images="{images}/{images}"' in dom  # every embedded plot decoded
    for key in SECTIONS:
        start = dom.index(f'<section id="{key}">')
        body = dom[start : dom.index("</section>", start)]
        assert ("Not available" not in body) == (key in available), key
    assert console_errors(log) == []
    _, log = render(page, shot)
    assert console_errors(log) == []
    pixels = plt.imread(shot)
    assert pixels.shape[1] == 1300 and pixels[..., :3].std() > 0.05  # something drawn


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(
    run_dir: Path, compare_dir: Path, tmp_path: Path
) -> None:
    check_page(build_report(run_dir), 8, set(SECTIONS), tmp_path / "run.png")
    available = set(SECTIONS) - {"results", "affinity"}
    check_page(build_report(compare_dir), 5, available, tmp_path / "compare.png")
    # the check can fail: a page with a console error is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("broken")</script></body></html>')
    assert any("broken" in line for line in console_errors(render(bad)[1]))
    with pytest.raises(AssertionError):  # and a page that lacks a section
        check_page(bad, 0, set(), tmp_path / "bad.png")
