"""One self-contained HTML page about a run folder, with its plots embedded.

Sections (each has an ``id`` and is always present; one without data says which command
produces it):

- ``results``: the selected model's validation and test metrics and the selected epoch
  (``results.json`` of a training run);
- ``curves``: learning curves per task, training and validation loss on the same axes, then
  each validation metric (the ``type: epoch`` records of ``metrics.jsonl``); for a comparison,
  every model's curves, the mean over its seeds with a band from the lowest to the highest;
- ``weights``: the task weights over training steps (``weight/<task>`` of the step records);
- ``gradients``: gradient cosines of each task pair over steps and the share of conflicting
  steps (``cosine/<a>/<b>`` of gradient methods, or the history of ``mtlkit affinity``);
- ``affinity``: the heatmaps of ``affinity.json`` (``mtlkit affinity``);
- ``comparison``: ``compare.json`` (``mtlkit compare``): each model's mean test metric and
  Δm with 95 % confidence intervals over seeds (Student's t), and the table;
- ``config``: the run's resolved config.

Files are looked up in the folder itself, then in its sub-folders. In a comparison folder
(``compare.json``) every run under it is drawn, labelled by model (``method@architecture``,
or ``STL``) and seed. Plots are PNG images embedded as base64 data; the page loads nothing
from elsewhere. Plots need matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.errors import MtlkitError, require
from mtlkit.files import atomic_write_text
from mtlkit.tasks import half_width

SECTIONS = {
    "results": "Metrics of the selected model",
    "curves": "Learning curves",
    "weights": "Task weights over time",
    "gradients": "Gradient cosines and conflicts",
    "affinity": "Task affinity",
    "comparison": "Comparison with single-task models",
    "config": "Config",
}

#: one model's runs: (seed or None, its metrics.jsonl records)
Runs = list[tuple[int | None, list[dict[str, Any]]]]


def _find(run_dir: Path, name: str) -> Path | None:
    direct = run_dir / name
    if direct.is_file():
        return direct
    found = sorted(p for p in run_dir.rglob(name) if "stl-" not in p.parent.name)
    return found[0] if found else None


def _plt() -> Any:
    require("matplotlib", "report", "the report's plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_tag(fig: Any, alt: str) -> str:
    plt = _plt()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _read_jsonl(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _model_and_seed(folder: str) -> tuple[str, int | None]:
    """``ew-hps-seed2`` → (``ew@hps``, 2); ``stl-cls-seed0`` → (``STL``, 0)."""
    match = re.fullmatch(r"(.*)-seed(\d+)", folder)
    name, seed = (match.group(1), int(match.group(2))) if match else (folder, None)
    if name.startswith("stl-"):
        return "STL", seed
    method, _, architecture = name.rpartition("-")
    return (f"{method}@{architecture}" if method else name), seed


def _models(run_dir: Path, comparison: bool) -> dict[str, Runs]:
    """The runs to draw, by model: a comparison's every run, or the one run of the folder."""
    if not comparison:
        path = _find(run_dir, "metrics.jsonl")
        name = path.parent.name if path is not None else ""
        return {name: [(None, _read_jsonl(path))]} if path is not None else {}
    models: dict[str, Runs] = {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        model, seed = _model_and_seed(path.parent.name)
        models.setdefault(model, []).append((seed, _read_jsonl(path)))
    return models


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(plt: Any, panels: int, width: float = 5.2, height: float = 3.8) -> tuple[Any, list]:
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _band(ax: Any, xs: list, series: list[list[float]], colour: Any, style: str, label: str):
    """The mean of ``series`` (one per seed) and, with several, a min–max band."""
    arr = np.array(series, dtype=float)
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0) if arr.shape[0] > 1 else arr[0]
    marker = "o" if len(xs) <= 30 else None
    ax.plot(xs, mean, style, color=colour, marker=marker, markersize=4, label=label)
    if arr.shape[0] > 1:
        ax.fill_between(
            xs, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=colour, alpha=0.15
        )


def _epoch_series(runs: Runs, path: tuple[str, ...]) -> tuple[list[int], list[list[float]]]:
    """Per seed, the value at ``path`` of each epoch record, on the epochs all runs share."""
    per_run = []
    for _, records in runs:
        values = {}
        for r in records:
            if r.get("type") != "epoch":
                continue
            node: Any = r
            for key in path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            values[int(r["epoch"])] = float(node) if isinstance(node, int | float) else math.nan
        per_run.append(values)
    epochs = sorted(set.intersection(*(set(v) for v in per_run))) if per_run else []
    return epochs, [[v[e] for e in epochs] for v in per_run]


def _tasks_and_metrics(models: dict[str, Runs]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for runs in models.values():
        for _, records in runs:
            for r in records:
                if r.get("type") != "epoch":
                    continue
                for task in r.get("train", {}).get("loss", {}):
                    out.setdefault(task, [])
                for task, metrics in (r.get("val") or {}).items():
                    names = out.setdefault(task, [])
                    names += [m for m in metrics if m != "loss" and m not in names]
    return out


def _curves(models: dict[str, Runs], comparison: bool) -> str:
    tasks = _tasks_and_metrics(models)
    if not tasks:
        return ""
    plt = _plt()
    colours = plt.get_cmap("tab10")
    tags = []
    for task, metrics in tasks.items():
        fig, axes = _grid(plt, 1 + len(metrics))
        for k, (name, runs) in enumerate(models.items()):
            colour = colours(k % 10)
            label = f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})" if comparison else ""
            for split, style in (("train", "--"), ("val", "-")):
                epochs, series = _epoch_series(
                    runs, (split, "loss", task) if split == "train" else (split, task, "loss")
                )
                if epochs and np.isfinite(series).any():
                    _band(axes[0], epochs, series, colour, style, f"{label} {split}".strip())
            for ax, metric in zip(axes[1:], metrics, strict=True):
                epochs, series = _epoch_series(runs, ("val", task, metric))
                if epochs and np.isfinite(series).any():
                    _band(ax, epochs, series, colour, "-", label or "val")
        axes[0].set_title(f"{task}: loss (training dashed, validation solid)", fontsize=10)
        axes[0].set_ylabel("loss")
        for ax, metric in zip(axes[1:], metrics, strict=True):
            ax.set_title(f"{task}: validation {metric}", fontsize=10)
            ax.set_ylabel(metric)
        for ax in axes:
            ax.set_xlabel("epoch")
            _integer_ticks(ax)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        tags.append(_figure_tag(fig, f"learning curves of task {task}"))
    note = (
        "<p>Every model of the comparison: the mean over its seeds, with a band from the "
        "lowest to the highest seed.</p>"
        if comparison
        else ""
    )
    return note + "".join(tags)


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


def _step_panels(models: dict[str, Runs], prefix: str, ylabel: str, zero: bool) -> Any:
    """One panel per model with step series: each key's mean over seeds (band: min–max)."""
    found = {}
    for name, runs in models.items():
        per_seed = [_series(records, prefix) for _, records in runs]
        keys = sorted(set().union(*per_seed)) if per_seed else []
        if keys:
            found[name] = (per_seed, keys)
    if not found:
        return None
    plt = _plt()
    colours = plt.get_cmap("tab10")
    fig, axes = _grid(plt, len(found), width=6.0, height=3.8)
    for ax, (name, (per_seed, keys)) in zip(axes, found.items(), strict=True):
        for k, key in enumerate(keys):
            runs = [s[key] for s in per_seed if key in s]
            steps = sorted(set.intersection(*(set(xs) for xs, _ in runs)))
            series = [[dict(zip(xs, ys, strict=True))[x] for x in steps] for xs, ys in runs]
            _band(ax, steps, series, colours(k % 10), "-", key)
        if zero:
            ax.axhline(0.0, color="grey", linewidth=0.8)
        seeds = len(per_seed)
        ax.set_title(name if seeds == 1 else f"{name} (mean of {seeds} seeds)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        _integer_ticks(ax)
        ax.legend(fontsize=8)
    return fig


def _weights(models: dict[str, Runs]) -> str:
    fig = _step_panels(models, "weight/", "task weight", zero=False)
    return "" if fig is None else _figure_tag(fig, "task weights")


def _gradients(models: dict[str, Runs], affinity: dict[str, Any] | None) -> str:
    fig = _step_panels(models, "cosine/", "gradient cosine", zero=True)
    rows = []
    for name, runs in models.items():
        for seed, records in runs:
            for pair, (_, ys) in _series(records, "cosine/").items():
                arr = np.asarray(ys, dtype=float)
                run = name if seed is None else f"{name}, seed {seed}"
                rows.append(
                    f"<tr><td>{html.escape(run)}</td><td>{html.escape(pair)}</td>"
                    f"<td>{arr.mean():+.3f}</td><td>{(arr < 0).mean() * 100:.0f} %</td>"
                    f"<td>{arr.size}</td></tr>"
                )
    source = "the training run's gradient method"
    if fig is None and affinity and affinity.get("history"):
        tasks = affinity["tasks"]
        records = [
            {"type": "step", "step": h["step"]}
            | {
                f"cosine/{a}/{tasks[j]}": h["cosine"][i][j]
                for i, a in enumerate(tasks)
                for j in range(i + 1, len(tasks))
            }
            for h in affinity["history"]
        ]
        return _gradients({"mtlkit affinity": [(None, records)]}, None).replace(
            source, "mtlkit affinity"
        )
    if fig is None:
        return ""
    table = (
        "<table><tr><th>run</th><th>pair</th><th>mean cosine</th><th>conflicting steps</th>"
        f"<th>steps</th></tr>{''.join(rows)}</table>"
    )
    return f"<p>From {source}.</p>" + _figure_tag(fig, "gradient cosines") + table


def _affinity(affinity: dict[str, Any] | None) -> str:
    if not affinity:
        return ""
    from mtlkit.analysis.affinity import HEATMAPS, Affinity, draw_heatmap

    plt = _plt()
    read = Affinity.from_json(affinity)  # older files: lookahead converted to %, errors derived
    tasks = read.tasks
    tags = []
    size = max(6.0, 1.2 * len(tasks) + 3.0)
    for measure in HEATMAPS:
        fig, ax = plt.subplots(figsize=(size, size - 0.6))
        image = draw_heatmap(ax, read.matrix(measure), tasks, measure, read.stderr(measure))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        tags.append(_figure_tag(fig, f"{measure} heatmap"))
    seconds = affinity.get("seconds", {})
    cost = seconds.get("measure_per_step_vs_train_step")
    note = f"<p>{affinity.get('steps', 0)} measured steps"
    if isinstance(cost, int | float):
        note += f"; measuring cost {cost:.2f}× a training step per step (amortised)"
    return (
        note
        + ". Row i, column j: the effect of task i on task j; the diagonal is left out.</p>"
        + f'<div class="grid">{"".join(tags)}</div>'
    )


def _comparison_charts(compare: dict[str, Any]) -> str:
    plt = _plt()
    n = len(compare.get("seeds", [])) or 1
    variants = compare.get("variants", {})
    panels = [(task, metric) for task, ms in compare["stl"].items() for metric in ms]
    fig, axes = _grid(plt, len(panels) + 1, width=5.2, height=0.5 * (len(variants) + 1) + 2.2)
    names = ["STL", *variants]
    colours = plt.get_cmap("tab10")
    for ax, (task, metric) in zip(axes, panels, strict=False):
        stats = [compare["stl"][task][metric]]
        stats += [variants[v]["metrics"][task][metric] for v in variants]
        means = [s["mean"] for s in stats]
        errors = [half_width(s["std"], n) for s in stats]
        ax.barh(
            names,
            means,
            xerr=errors,
            color=[colours(i % 10) for i in range(len(names))],
            capsize=4,
            alpha=0.85,
        )
        ax.invert_yaxis()
        ax.set_title(f"{task}: test {metric}", fontsize=10)
        ax.set_xlabel(metric)
    ax = axes[-1]
    dms = [variants[v]["delta_m"] for v in variants]
    decision_colour = {"better": "tab:green", "worse": "tab:red"}
    ax.barh(
        list(variants),
        [d["mean"] for d in dms],
        xerr=[half_width(d.get("std"), n) for d in dms],
        capsize=4,
        color=[decision_colour.get(variants[v].get("decision", ""), "tab:grey") for v in variants],
        alpha=0.85,
    )
    for k, d in enumerate(dms):
        ax.plot(d.get("values", []), [k] * len(d.get("values", [])), "k.", markersize=5)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_title("Δm vs single-task models (%; primary metrics; > 0 better)", fontsize=10)
    ax.set_xlabel("Δm (%)")
    interval = (
        f"95 % confidence intervals, t over {n} seeds, paired by seed for Δm; dots: each "
        "seed's Δm; Δm bars green: better, red: worse, grey: no detectable difference"
        if n > 1
        else "one seed: interval n/a (one seed cannot decide)"
    )
    return f"<p>Bars: mean over seeds; whiskers: {interval}.</p>" + _figure_tag(
        fig, "comparison charts"
    )


def _comparison(compare: dict[str, Any] | None) -> str:
    if not compare:
        return ""
    from mtlkit.experiments.compare import efficiency_rows, rows

    verdicts = "".join(
        f"<li>{html.escape(v['verdict'])}</li>" for v in compare.get("variants", {}).values()
    )
    charts = _comparison_charts(compare) if compare.get("variants") else ""
    costs = efficiency_rows(compare)
    cost_table = (
        "<p>Cost: STL sums its T models; training seconds are a mean over seeds; latency is "
        "the median time of one test batch after a warm-up, throughput in examples/s; peak "
        "memory on CUDA only (n/a elsewhere).</p>" + _html_table(costs)
        if costs
        else ""
    )
    return f"<ul>{verdicts}</ul>{charts}{_html_table(rows(compare))}{cost_table}"


def _html_table(table: list[dict[str, str]]) -> str:
    if not table:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in table
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _results(results: dict[str, Any] | None, epochs: int) -> str:
    if not results or "test" not in results:
        return ""
    monitor = results.get("monitor") or {}
    value = monitor.get("value")
    chosen = f"Selected epoch: <b>{results.get('best_epoch')}</b>"
    if epochs:
        chosen += f" of {epochs}"
    if isinstance(value, int | float):
        chosen += f", on validation {html.escape(str(monitor.get('name')))} = {value:.4g}"
    if results.get("stopped_early"):
        chosen += " (stopped early)"
    rows = []
    for task, metrics in results["test"].items():
        for metric, test_value in metrics.items():
            val_value = results.get("val", {}).get(task, {}).get(metric)
            val_text = f"{val_value:.4f}" if isinstance(val_value, int | float) else ""
            test_text = f"{test_value:.4f}" if isinstance(test_value, int | float) else ""
            rows.append(
                f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td>"
                f"<td>{val_text}</td><td>{test_text}</td></tr>"
            )
    return (
        f"<p>{chosen}.</p><table><tr><th>task</th><th>metric</th><th>validation</th>"
        f"<th>test</th></tr>{''.join(rows)}</table>"
    )


def _config(config_text: str | None) -> str:
    if not config_text:
        return ""
    return f"<pre>{html.escape(config_text)}</pre>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1300px; color: #222; }
section { margin-bottom: 2.5em; } img { max-width: 100%; display: block; margin: 0.5em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; } .grid img { max-width: 640px; }
table { border-collapse: collapse; font-size: 0.9em; margin-top: 0.5em; }
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
    "results": "no results.json: a finished `mtlkit train` run writes it (a comparison's "
    "results are under Comparison)",
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
    affinity = json.loads(affinity_file.read_text(encoding="utf-8")) if affinity_file else None
    compare = json.loads(compare_file.read_text(encoding="utf-8")) if compare_file else None
    results_file = run_dir / "results.json"
    results = (
        json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else None
    )
    if config_file is not None:
        config_text = config_file.read_text(encoding="utf-8")
    elif compare is not None:
        import yaml

        config_text = yaml.safe_dump(compare.get("config"), sort_keys=False)
    else:
        config_text = None
    comparison = compare is not None and metrics_file is not None and metrics_file.parent != run_dir
    models = _models(run_dir, comparison)
    epochs = sum(1 for r in _read_jsonl(metrics_file) if r.get("type") == "epoch")
    bodies = {
        "results": _results(results, epochs),
        "curves": _curves(models, comparison),
        "weights": _weights(models),
        "gradients": _gradients(models, affinity),
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
