"""The main job: single-task models against one multi-task model on built-in real data.

For each task a single-task (STL) model is trained alone; then one hard-parameter-sharing
(MTL) model with equal weights learns all tasks. :func:`run_demo` does so over 3 seeds under
the convergence protocol of ``mtlkit compare`` (docs/protocol.md): every model trains until
validation stops improving within the same epoch budget and is selected on the validation
split; the test split gives the table, Δm on each task's primary metric (Maninis et al. 2019;
see :func:`mtlkit.tasks.delta_m`) with a 95 % t-interval over seeds, paired by seed, the
decision, and what each side costs. :func:`run_comparison` is the one-seed version that the
examples use; one seed gives no interval and decides nothing.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mtlkit.config import RunConfig, TaskConfig, parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.run import build_run, new_run_dir, train_run
from mtlkit.files import atomic_write_text
from mtlkit.tasks import delta_m, delta_m_per_task, get_metric

#: seeds of the demo: 3 keep `mtlkit demo` on MultiDigits near a minute on 2 CPU cores
DEMO_SEEDS = 3

DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "multidigits": {
        "name": "multidigits",
        "seed": 0,
        "data": {"name": "multidigits", "params": {"seed": 0}, "batch_size": 128},
        "model": {
            "architecture": "hps",
            "encoder": {
                "name": "cnn",
                "params": {"channels": [32, 64, 64], "out_features": 128, "pool_size": [2, 4]},
            },
        },
        "weighting": {"name": "ew"},
        "optimizer": {"name": "adam", "params": {"lr": 0.001}},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 10, "monitor": "mean/accuracy"},
    },
    "gss": {
        "name": "gss",
        "seed": 0,
        "data": {"name": "gss", "params": {"seed": 0}, "batch_size": 512},
        "model": {
            "architecture": "hps",
            "encoder": {"name": "mlp", "params": {"hidden": [128, 64], "dropout": 0.1}},
        },
        "weighting": {"name": "ew"},
        "optimizer": {"name": "adam", "params": {"lr": 0.001}},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 6, "monitor": "mean/auroc"},
    },
}


def demo_config(dataset: str) -> RunConfig:
    """The demo's config for a built-in dataset."""
    if dataset not in DEMO_CONFIGS:
        raise ConfigError(
            f"no demo for dataset '{dataset}'; available: {', '.join(sorted(DEMO_CONFIGS))}"
        )
    return parse_config(copy.deepcopy(DEMO_CONFIGS[dataset]))


def run_comparison(
    config: RunConfig, out_dir: Path, progress: bool = True, console: Console | None = None
) -> dict[str, Any]:
    """Train one STL model per task and the MTL model of ``config``; write and return results."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_run(config).tasks
    overrides = {t.name: t for t in config.tasks or []}
    results: dict[str, Any] = {"config": config.model_dump(mode="json"), "stl": {}, "mtl": None}
    started = time.perf_counter()
    for task in tasks:
        chosen = overrides.get(task.name, TaskConfig(name=task.name))
        stl = config.model_copy(
            deep=True, update={"name": f"{config.name}-stl-{task.name}", "tasks": [chosen]}
        )
        console.print(f"[bold]STL[/] {task.name}")
        results["stl"][task.name] = train_run(stl, out_dir / f"stl-{task.name}", progress=progress)
    console.print(f"[bold]MTL[/] {', '.join(t.name for t in tasks)} ({config.weighting.name})")
    results["mtl"] = train_run(config, out_dir / "mtl", progress=progress)
    main = [t for t in tasks if not t.auxiliary]
    baseline = {t.name: _metrics(results["stl"][t.name]["test"][t.name], t.metrics) for t in main}
    mtl = {t.name: _metrics(results["mtl"]["test"][t.name], t.metrics) for t in main}
    primary = {t.name: t.primary_metric or "" for t in main}
    results["primary"] = primary
    results["delta_m"] = delta_m(mtl, baseline, metrics=primary)
    results["delta_m_per_task"] = delta_m_per_task(mtl, baseline, metrics=primary)
    results["delta_m_all_metrics"] = delta_m(mtl, baseline)
    results["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def _metrics(values: dict[str, float], names: Any) -> dict[str, float]:
    return {m: values[m] for m in names}


def print_table(results: dict[str, Any], console: Console) -> None:
    """Per-task test metrics for STL and MTL, relative change, and Δm."""
    table = Table(title="Test metrics: single-task (STL) vs multi-task (MTL)")
    for column in ("task", "metric", "STL", "MTL", "change"):
        table.add_column(column, justify="right" if column not in ("task", "metric") else "left")
    for task, stl in results["stl"].items():
        mtl = results["mtl"]["test"][task]
        for metric in results["mtl"]["tasks"][task]["metrics"]:
            a, b = stl["test"][task][metric], mtl[metric]
            sign = 1 if get_metric(metric).higher_is_better else -1
            change = sign * (b - a) / abs(a) * 100 if a else float("nan")
            colour = "green" if change > 0 else "red" if change < 0 else "white"
            table.add_row(task, metric, f"{a:.4f}", f"{b:.4f}", f"[{colour}]{change:+.2f} %[/]")
    console.print(table)
    dm = results["delta_m"]
    on = ", ".join(f"{t}: {m}" for t, m in results.get("primary", {}).items())
    console.print(
        f"Δm = {dm:+.2f} % on the primary metrics ({on}; all metrics: "
        f"{results.get('delta_m_all_metrics', dm):+.2f} %), positive is better (Maninis et al. "
        "2019). One seed has no interval and cannot decide: `mtlkit compare --seeds 3` gives "
        "a verdict.",
        markup=False,
    )
    stl_params = sum(r["parameters"] for r in results["stl"].values())
    stl_time = sum(r["train_seconds"] for r in results["stl"].values())
    console.print(
        f"Cost: MTL {results['mtl']['parameters']:,} parameters and "
        f"{results['mtl']['train_seconds']:.0f} s of training; STL {stl_params:,} parameters "
        f"and {stl_time:.0f} s in all."
    )


def run_demo(
    dataset: str = "multidigits",
    out: Path | None = None,
    epochs: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    seeds: int = DEMO_SEEDS,
    patience: int | None = None,
) -> dict[str, Any]:
    """Run the demo on a built-in dataset: STL against EW-MTL over ``seeds`` seeds under the
    convergence protocol (``epochs``: the maximum per run), then print the table, the
    efficiency and the verdict (:func:`mtlkit.experiments.compare.run_compare`)."""
    from mtlkit.experiments.compare import print_summary, run_compare

    console = console or Console()
    config = demo_config(dataset)
    out_dir = Path(out) if out is not None else new_run_dir("runs", f"demo-{dataset}")
    started = time.perf_counter()
    summary = run_compare(
        config,
        out_dir,
        methods=[config.weighting.name],
        seeds=seeds,
        progress=progress,
        console=console,
        patience=patience,
        max_epochs=epochs,
    )
    print_summary(summary, console)
    if seeds < 2:
        console.print("One seed cannot decide: run the demo with --seeds 3 for an interval.")
    console.print(f"Run folder: {out_dir}  ({time.perf_counter() - started:.1f} s)")
    return summary
