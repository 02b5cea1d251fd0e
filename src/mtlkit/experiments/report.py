"""One self-contained HTML page about a run folder, with its plots embedded.

Sections (each has an ``id`` and is always present; one without data says which command
produces it):

- ``curves``: per-task learning curves (training loss and validation metrics per epoch,
  from the ``type: epoch`` records of ``metrics.jsonl``);
- ``weights``: the task weights over training steps (``weight/<task>`` of the step records);
- ``gradients``: gradient cosines of each task pair over steps and the share of conflicting
  steps (``cosine/<a>/<b>`` of gradient methods, or the history of ``mtlkit affinity``);
- ``affinity``: the heatmaps of ``affinity.json`` (``mtlkit affinity``);
- ``comparison``: the table of ``compare.json`` (``mtlkit compare``);
- ``config``: the run's resolved config.

Files are looked up in the folder itself, then in its sub-folders (a comparison's runs), so
the page works for a training run, a comparison or an affinity folder. Plots are PNG images
embedded as base64 data; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.errors import MtlkitError
from mtlkit.files import atomic_write_text

SECTIONS = {
    "curves": "Learning curves",
    "weights": "Task weights over time",
    "gradients": "Gradient cosines and conflicts",
    "affinity": "Task affinity",
    "comparison": "Comparison with single-task models",
    "config": "Config",
}


def _find(run_dir: Path, name: str) -> Path | None:
    direct = run_dir / name
    if direct.is_file():
        return direct
    found = sorted(p for p in run_dir.rglob(name) if "stl-" not in p.parent.name)
    return found[0] if found else None


def _figure_tag(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_jsonl(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _curves(records: list[dict[str, Any]]) -> str:
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        return ""
    plt = _plt()
    tasks = list(epochs[0].get("train", {}).get("loss", {}))
    metrics = sorted({m for r in epochs for t in r.get("val", {}).values() for m in t})
    panels = 1 + len(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3), squeeze=False)
    x = [r["epoch"] for r in epochs]
    ax = axes[0][0]
    for task in tasks:
        ax.plot(x, [r["train"]["loss"].get(task, np.nan) for r in epochs], marker="o", label=task)
    ax.set_title("training loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    for k, metric in enumerate(metrics, start=1):
        ax = axes[0][k]
        for task in tasks:
            values = [r.get("val", {}).get(task, {}).get(metric, np.nan) for r in epochs]
            if any(np.isfinite(values)):
                ax.plot(x, values, marker="o", label=task)
        ax.set_title(f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return _figure_tag(fig, "learning curves")


def _series(records: list[dict[str, Any]], prefix: str) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r.get("type") != "step":
            continue
        for key, value in r.items():
            if key.startswith(prefix) and isinstance(value, int | float):
                xs, ys = out.setdefault(key[len(prefix) :], ([], []))
                xs.append(r["step"])
                ys.append(value)
    return out


def _weights(records: list[dict[str, Any]]) -> str:
    series = _series(records, "weight/")
    if not series:
        return ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    for task, (xs, ys) in series.items():
        ax.plot(xs, ys, label=task)
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    ax.legend(fontsize=7)
    return _figure_tag(fig, "task weights")


def _gradients(records: list[dict[str, Any]], affinity: dict[str, Any] | None) -> str:
    series = _series(records, "cosine/")
    source = "the training run's gradient method"
    if not series and affinity and affinity.get("history"):
        tasks = affinity["tasks"]
        for h in affinity["history"]:
            for i, a in enumerate(tasks):
                for j in range(i + 1, len(tasks)):
                    xs, ys = series.setdefault(f"{a}/{tasks[j]}", ([], []))
                    xs.append(h["step"])
                    ys.append(h["cosine"][i][j])
        source = "mtlkit affinity"
    if not series:
        return ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    rows = []
    for pair, (xs, ys) in series.items():
        ax.plot(xs, ys, label=pair)
        arr = np.asarray(ys, dtype=float)
        rows.append(
            f"<tr><td>{html.escape(pair)}</td><td>{arr.mean():+.3f}</td>"
            f"<td>{(arr < 0).mean() * 100:.0f} %</td><td>{arr.size}</td></tr>"
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("cosine")
    ax.legend(fontsize=7)
    table = (
        "<table><tr><th>pair</th><th>mean cosine</th><th>conflicting steps</th>"
        f"<th>steps</th></tr>{''.join(rows)}</table>"
    )
    return f"<p>From {source}.</p>" + _figure_tag(fig, "gradient cosines") + table


def _affinity(affinity: dict[str, Any] | None) -> str:
    if not affinity:
        return ""
    plt = _plt()
    tasks = affinity["tasks"]
    titles = {"cosine": "mean gradient cosine", "conflict": "conflict share", "tag": "TAG Z(i→j)"}
    fig, axes = plt.subplots(1, 3, figsize=(4 * 3, 0.6 * len(tasks) + 2.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], titles.items(), strict=True):
        m = np.asarray(affinity[key], dtype=float)
        limit = float(np.nanmax(np.abs(m))) or 1.0
        image = ax.imshow(m, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    seconds = affinity.get("seconds", {})
    cost = seconds.get("measure_per_step_vs_train_step")
    note = f"<p>{affinity.get('steps', 0)} measured steps"
    if isinstance(cost, int | float):
        note += f"; measuring cost {cost:.2f}× a training step per step (amortised)"
    return (
        note
        + ". Row i, column j: the effect of task i on task j.</p>"
        + _figure_tag(fig, "affinity heatmaps")
    )


def _comparison(compare: dict[str, Any] | None) -> str:
    if not compare:
        return ""
    from mtlkit.experiments.compare import rows

    table = rows(compare)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in table
    )
    verdicts = "".join(
        f"<li>{html.escape(v['verdict'])}</li>" for v in compare.get("variants", {}).values()
    )
    return f"<table><tr>{head}</tr>{body}</table><ul>{verdicts}</ul>"


def _config(config_text: str | None) -> str:
    if not config_text:
        return ""
    return f"<pre>{html.escape(config_text)}</pre>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
section { margin-bottom: 2em; } img { max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.missing { color: #777; font-style: italic; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images", images.length + "/" + ok);
  document.body.setAttribute("data-rendered", "yes");
});
"""

_HINTS = {
    "curves": "no epoch records: train a run with `mtlkit train`",
    "weights": "no step records with task weights in metrics.jsonl",
    "gradients": "no gradient cosines: use a gradient method, or run `mtlkit affinity`",
    "affinity": "no affinity.json: run `mtlkit affinity CONFIG --out RUN_DIR/affinity`",
    "comparison": "no compare.json: run `mtlkit compare CONFIG --out RUN_DIR`",
    "config": "no config.yaml",
}


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of ``run_dir`` (to ``run_dir/report.html`` by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MtlkitError(f"report: {run_dir} is not a folder")
    metrics_file = _find(run_dir, "metrics.jsonl")
    affinity_file = _find(run_dir, "affinity.json")
    compare_file = _find(run_dir, "compare.json")
    config_file = _find(run_dir, "config.yaml")
    if not any((metrics_file, affinity_file, compare_file, config_file)):
        raise MtlkitError(
            f"report: {run_dir} holds no run (no metrics.jsonl, config.yaml, affinity.json "
            "or compare.json)"
        )
    records = _read_jsonl(metrics_file)
    affinity = json.loads(affinity_file.read_text(encoding="utf-8")) if affinity_file else None
    compare = json.loads(compare_file.read_text(encoding="utf-8")) if compare_file else None
    if config_file is not None:
        config_text = config_file.read_text(encoding="utf-8")
    elif compare is not None:
        import yaml

        config_text = yaml.safe_dump(compare.get("config"), sort_keys=False)
    else:
        config_text = None
    bodies = {
        "curves": _curves(records),
        "weights": _weights(records),
        "gradients": _gradients(records, affinity),
        "affinity": _affinity(affinity),
        "comparison": _comparison(compare),
        "config": _config(config_text),
    }
    parts = []
    for key, title in SECTIONS.items():
        body = bodies[key] or f'<p class="missing">Not available: {html.escape(_HINTS[key])}.</p>'
        parts.append(f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>')
    nav = " · ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t in SECTIONS.items())
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>mtlkit report: {html.escape(run_dir.name)}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>mtlkit report: {html.escape(run_dir.name)}</h1><nav>{nav}</nav>"
        f"{''.join(parts)}<script>{_SCRIPT}</script></body></html>\n"
    )
    target = Path(out) if out is not None else run_dir / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, page)
    return target
