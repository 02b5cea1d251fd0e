"""MTL against STL: single-task baselines and several methods/architectures over seeds.

For every seed, one single-task (STL) model per main task and one multi-task model per
(method, architecture) variant are trained on the same data, model and budget (the config's
encoder, optimiser, scheduler and epochs). Each model is selected on the validation split only
(the Trainer's monitor); the test split gives the reported numbers. Per variant and task the
table shows each metric as mean ± std over seeds, and Δm (Maninis et al. 2019, "Attentive
Single-Tasking of Multiple Tasks", CVPR; :func:`mtlkit.tasks.delta_m`) against the STL model
of the same seed, as mean ± std over seeds. Auxiliary tasks are trained but left out of Δm.

Every trained model is a run folder (:func:`mtlkit.experiments.run.train_run`). A re-run of
the same comparison into the same folder reuses every run whose ``results.json`` exists and
whose saved config equals the one it would train, so an interrupted comparison resumes; a run
folder that was trained on different data is an error, since the numbers would not be
comparable.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from mtlkit.config import RunConfig, TaskConfig, parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.run import _differences, build_run, train_run
from mtlkit.files import atomic_write_text
from mtlkit.tasks import Task, delta_m, delta_m_per_task, mean_std

#: the architecture of the single-task baselines: one encoder and one head
STL_ARCHITECTURE = "hps"


@dataclass(frozen=True)
class Variant:
    """One multi-task model of a comparison: a weighting method on an architecture."""

    method: str
    architecture: str

    @property
    def label(self) -> str:
        return f"{self.method}@{self.architecture}"


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, lower-cased; an unknown one raises a ConfigError listing the known."""
    from mtlkit.weighting import WEIGHTINGS

    out = []
    for name in methods:
        if name not in WEIGHTINGS:
            raise ConfigError(
                f"compare: unknown method '{name}'; available: {', '.join(WEIGHTINGS.names())}"
            )
        out.append(name.lower())
    if not out:
        raise ConfigError("compare: option 'methods' names no method")
    return out


def check_architectures(architectures: Sequence[str]) -> list[str]:
    """The architecture names; an unknown one raises a ConfigError listing the known."""
    from mtlkit.nn import ARCHITECTURES

    out = []
    for name in architectures:
        if name not in ARCHITECTURES:
            raise ConfigError(
                f"compare: unknown architecture '{name}'; "
                f"available: {', '.join(ARCHITECTURES.names())}"
            )
        out.append(name.lower())
    return out


def stl_config(config: RunConfig, task: Task, seed: int) -> RunConfig:
    """The single-task baseline of ``task``: the config's data, encoder and budget, one head."""
    overrides = {t.name: t for t in config.tasks or []}
    chosen = overrides.get(task.name, TaskConfig(name=task.name)).model_copy(
        update={"weight": None}
    )
    model = config.model.model_copy(update={"architecture": STL_ARCHITECTURE, "params": {}})
    return config.model_copy(
        deep=True,
        update={
            "name": f"{config.name}-stl-{task.name}-seed{seed}",
            "seed": seed,
            "tasks": [chosen],
            "weights": None,
            "model": model,
            "weighting": config.weighting.model_copy(update={"name": "ew", "params": {}}),
            "aggregator": None,
            "train": config.train.model_copy(update={"monitor": _stl_monitor(config, task)}),
        },
    )


def variant_config(config: RunConfig, variant: Variant, seed: int) -> RunConfig:
    """The multi-task model of ``variant`` (architecture options kept only for the same one)."""
    same_arch = variant.architecture == config.model.architecture
    model = config.model.model_copy(
        update={
            "architecture": variant.architecture,
            "params": config.model.params if same_arch else {},
        }
    )
    same_method = variant.method == config.weighting.name
    weighting = config.weighting.model_copy(
        update={
            "name": variant.method,
            "params": config.weighting.params if same_method else {},
        }
    )
    update: dict[str, Any] = {
        "name": f"{config.name}-{variant.method}-{variant.architecture}-seed{seed}",
        "seed": seed,
        "model": model,
        "weighting": weighting,
    }
    if not same_method:
        update["weights"] = None
        update["tasks"] = (
            [t.model_copy(update={"weight": None}) for t in config.tasks] if config.tasks else None
        )
    return config.model_copy(deep=True, update=update)


def _stl_monitor(config: RunConfig, task: Task) -> str:
    """The monitor of a single-task run: the config's when it applies to ``task`` alone
    (``loss``, ``mean/<m>`` with m a metric of the task, ``<task>/<m>``), else ``loss``."""
    monitor = config.train.monitor
    scope, _, metric = monitor.partition("/")
    if monitor == "loss" or scope == task.name:
        return monitor
    if scope == "mean" and metric in (task.metrics or []):
        return monitor
    return "loss"


def train_or_reuse(
    config: RunConfig, run_dir: Path, progress: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """``results.json`` of the run in ``run_dir``: reused when it exists and was trained from
    ``config``; trained otherwise. A finished run with a different config is an error that
    names the fields (different data: not comparable)."""
    results_file, config_file = run_dir / "results.json", run_dir / "config.yaml"
    if results_file.is_file() and config_file.is_file():
        saved = parse_config(yaml.safe_load(config_file.read_text(encoding="utf-8")))
        differing = _differences(saved.model_dump(), config.model_dump(), skip=set())
        if not differing:
            if console is not None:
                console.print(f"  reusing {run_dir.name}")
            return json.loads(results_file.read_text(encoding="utf-8"))
        data_fields = [f for f in differing if f == "data" or f.startswith("data.")]
        if data_fields:
            raise ConfigError(
                f"compare: the finished run {run_dir} was trained on different data "
                f"({', '.join(data_fields)} differ); its results are not comparable with this "
                "comparison's. Use a fresh --out folder"
            )
        raise ConfigError(
            f"compare: the finished run {run_dir} was trained with a different config "
            f"({', '.join(differing)} differ); use a fresh --out folder"
        )
    if console is not None:
        console.print(f"  training {run_dir.name}")
    return train_run(config, run_dir, progress=progress)


def check_same_data(results: dict[str, dict[str, Any]]) -> None:
    """Raise when the runs of a comparison were trained on different data.

    ``results`` maps a run label to a results mapping with a ``data`` entry (the run's data
    config). Every run must agree, or Δm compares numbers from different splits.
    """
    reference: tuple[str, Any] | None = None
    for label, res in results.items():
        data = res.get("data")
        if reference is None:
            reference = (label, data)
        elif data != reference[1]:
            raise ConfigError(
                f"compare: run '{label}' was trained on different data than run "
                f"'{reference[0]}' ({data} vs {reference[1]}); a comparison needs the same data"
            )


def _main_metrics(tasks: Sequence[Task], test: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {t.name: {m: test[t.name][m] for m in t.metrics or []} for t in tasks}


def summarise(
    stl: dict[int, dict[str, dict[str, float]]],
    variants: dict[str, dict[int, dict[str, dict[str, float]]]],
) -> dict[str, Any]:
    """Mean ± std over seeds of each metric, and of Δm (overall and per task) against STL.

    ``stl[seed][task][metric]`` are the baselines' test metrics; ``variants[label][seed]``
    the same for each multi-task variant. Δm is computed per seed against that seed's
    baselines, then averaged.
    """
    seeds = sorted(stl)
    tasks = list(stl[seeds[0]])
    out: dict[str, Any] = {"stl": _metric_stats(stl, seeds, tasks), "variants": {}}
    for label, runs in variants.items():
        missing = [s for s in seeds if s not in runs]
        if missing:
            raise ConfigError(f"compare: variant '{label}' lacks seed(s) {missing}")
        dms = [delta_m(runs[s], stl[s]) for s in seeds]
        per_task = [delta_m_per_task(runs[s], stl[s]) for s in seeds]
        dm_mean, dm_std = mean_std(dms)
        task_dm = {t: mean_std([p[t] for p in per_task]) for t in tasks}
        out["variants"][label] = {
            "metrics": _metric_stats(runs, seeds, tasks),
            "delta_m": {"mean": dm_mean, "std": dm_std, "values": dms},
            "delta_m_per_task": {t: {"mean": m, "std": s} for t, (m, s) in task_dm.items()},
            "wins": sum(1 for m, _ in task_dm.values() if m > 0),
            "verdict": verdict(label, task_dm, (dm_mean, dm_std)),
        }
    return out


def _metric_stats(
    runs: dict[int, dict[str, dict[str, float]]], seeds: Sequence[int], tasks: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        stats[task] = {}
        for metric in runs[seeds[0]][task]:
            mean, std = mean_std([runs[s][task][metric] for s in seeds])
            stats[task][metric] = {"mean": mean, "std": std}
    return stats


def verdict(
    label: str, task_dm: dict[str, tuple[float, float]], overall: tuple[float, float]
) -> str:
    """A plain sentence: on how many tasks MTL beats STL (mean per-task Δm > 0), and Δm."""
    wins = sum(1 for m, _ in task_dm.values() if m > 0)
    mean, std = overall
    return (
        f"MTL ({label}) beats STL on {wins} of {len(task_dm)} tasks; Δm = {mean:+.1f} ± {std:.1f} %"
    )


def run_compare(
    config: RunConfig,
    out_dir: Path,
    methods: Sequence[str] | None = None,
    architectures: Sequence[str] | None = None,
    seeds: int = 3,
    progress: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the STL baselines and every variant over ``seeds`` seeds; write
    ``compare.json``, ``compare.csv`` and ``compare.md`` into ``out_dir`` and return the
    summary."""
    console = console or Console()
    if seeds < 1:
        raise ConfigError(f"compare: option 'seeds' must be ≥ 1, got {seeds}")
    method_names = check_methods(methods or [config.weighting.name])
    arch_names = check_architectures(architectures or [config.model.architecture])
    variants = [Variant(m, a) for a in arch_names for m in method_names]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_run(config).tasks
    main = [t for t in tasks if not t.auxiliary]
    if not main:
        raise ConfigError("compare: every task is auxiliary; Δm needs at least one main task")
    seed_values = [config.seed + i for i in range(seeds)]
    started = time.perf_counter()
    stl: dict[int, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[int, dict[str, dict[str, float]]]] = {v.label: {} for v in variants}
    seconds: dict[str, list[float]] = {"stl": [], **{v.label: [] for v in variants}}
    data_of: dict[str, dict[str, Any]] = {}
    for seed in seed_values:
        stl[seed] = {}
        for task in main:
            console.print(f"[bold]STL[/] {task.name} (seed {seed})")
            cfg = stl_config(config, task, seed)
            res = train_or_reuse(cfg, out_dir / "runs" / f"stl-{task.name}-seed{seed}", progress)
            stl[seed][task.name] = _main_metrics([task], res["test"])[task.name]
            seconds["stl"].append(res["train_seconds"])
            data_of[f"stl-{task.name}-seed{seed}"] = {"data": cfg.data.model_dump()}
        for v in variants:
            console.print(f"[bold]MTL[/] {v.label} (seed {seed})")
            cfg = variant_config(config, v, seed)
            folder = f"{v.method}-{v.architecture}-seed{seed}"
            res = train_or_reuse(cfg, out_dir / "runs" / folder, progress)
            runs[v.label][seed] = _main_metrics(main, res["test"])
            seconds[v.label].append(res["train_seconds"])
            data_of[folder] = {"data": cfg.data.model_dump()}
    check_same_data(data_of)
    summary = summarise(stl, runs)
    summary["config"] = config.model_dump(mode="json")
    summary["seeds"] = seed_values
    summary["tasks"] = {
        t.name: {"metrics": list(t.metrics or []), "auxiliary": t.auxiliary} for t in tasks
    }
    summary["train_seconds"] = {k: mean_std(v) for k, v in seconds.items()}
    summary["per_seed"] = {"stl": stl, "variants": runs}
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "compare.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "compare.csv", to_csv(summary))
    atomic_write_text(out_dir / "compare.md", to_markdown(summary))
    return summary


def _fmt(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per (model, task, metric): mean ± std, the per-task Δm, and train time."""
    out = []
    times = summary.get("train_seconds", {})
    for task, metrics in summary["stl"].items():
        for metric, stat in metrics.items():
            out.append(
                {
                    "model": "STL",
                    "task": task,
                    "metric": metric,
                    "value": _fmt(stat),
                    "delta_m_task": "",
                    "delta_m": "",
                    "train_s": f"{times['stl'][0]:.1f}" if "stl" in times else "",
                }
            )
    for label, res in summary["variants"].items():
        for task, metrics in res["metrics"].items():
            for metric, stat in metrics.items():
                out.append(
                    {
                        "model": label,
                        "task": task,
                        "metric": metric,
                        "value": _fmt(stat),
                        "delta_m_task": _fmt(res["delta_m_per_task"][task], 2),
                        "delta_m": _fmt(res["delta_m"], 2),
                        "train_s": f"{times[label][0]:.1f}" if label in times else "",
                    }
                )
    return out


def to_csv(summary: dict[str, Any]) -> str:
    """The table as CSV (values ``mean ± std``; Δm in percent)."""
    buffer = io.StringIO()
    table = rows(summary)
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_markdown(summary: dict[str, Any]) -> str:
    """The table and the verdicts as Markdown."""
    seeds = summary.get("seeds", [])
    lines = [
        f"Test metrics, mean ± std over {len(seeds)} seed(s); Δm (%) against the single-task "
        "models of the same seed (positive: MTL better). Models selected on validation.",
        "",
        "| model | task | metric | value | Δm task (%) | Δm (%) | train s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows(summary):
        lines.append("| " + " | ".join(r.values()) + " |")
    lines.append("")
    lines += [f"- {res['verdict']}" for res in summary["variants"].values()]
    return "\n".join(lines) + "\n"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The table and a verdict per variant."""
    from rich.table import Table

    table = Table(title="Test metrics, mean ± std over seeds; Δm against STL")
    for column in ("model", "task", "metric", "value", "Δm task %", "Δm %", "train s"):
        table.add_column(column)
    for r in rows(summary):
        table.add_row(*r.values())
    console.print(table)
    for res in summary["variants"].values():
        console.print(res["verdict"])


def run_group(
    config: RunConfig,
    out_dir: str | Path,
    models: int,
    affinity_file: str | Path | None = None,
    measure: str = "tag",
    verify: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Choose at most ``models`` groups of the config's tasks from their affinity (read from
    ``affinity_file`` or measured), write ``group.json``; with ``verify``, train the chosen
    grouping, the all-in-one model and the single-task models (seed ``config.seed``) and
    report each choice's per-task test metrics and Δm against the single-task models.

    With the grouping, each task's metrics come from the model that serves it; a group of one
    task is its single-task model."""
    from mtlkit.analysis.affinity import Affinity
    from mtlkit.analysis.grouping import best_grouping
    from mtlkit.experiments.affinity import run_affinity

    console = console or Console()
    out = Path(out_dir)
    tasks = build_run(config).tasks
    names = [t.name for t in tasks]
    if not 1 <= models <= len(names):
        raise ConfigError(
            f"group: option 'models' (k) must be between 1 and the number of tasks "
            f"({len(names)}: {', '.join(names)}), got {models}"
        )
    if measure not in ("tag", "cosine"):
        raise ConfigError(f"group: option 'measure' must be 'tag' or 'cosine', got '{measure}'")
    if affinity_file is not None:
        affinity = Affinity.load(affinity_file)
        if sorted(affinity.tasks) != sorted(names):
            raise ConfigError(
                f"group: the affinity file {affinity_file} is for tasks "
                f"{', '.join(affinity.tasks)}, but the config's tasks are {', '.join(names)}"
            )
    else:
        console.print("group: measuring the task affinity (mtlkit affinity)")
        affinity = run_affinity(config, out / "affinity")
    index = [affinity.tasks.index(n) for n in names]
    matrix = affinity.matrix(measure)[np.ix_(index, index)]
    grouping = best_grouping(matrix, models, names)
    result: dict[str, Any] = {"measure": measure, "grouping": grouping.to_json()}
    if verify:
        result["verify"] = _verify_grouping(config, tasks, grouping, out, console)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "group.json", json.dumps(result, indent=2))
    return result


def _verify_grouping(
    config: RunConfig, tasks: list[Task], grouping: Any, out: Path, console: Console
) -> dict[str, Any]:
    seed = config.seed
    main = [t for t in tasks if not t.auxiliary]
    by_name = {t.name: t for t in tasks}
    stl: dict[str, dict[str, float]] = {}
    for task in main:
        cfg = stl_config(config, task, seed)
        res = train_or_reuse(cfg, out / "runs" / f"stl-{task.name}", False, console)
        stl[task.name] = _main_metrics([task], res["test"])[task.name]
    overrides = {t.name: t for t in config.tasks or []}

    def group_run(members: list[str]) -> dict[str, Any]:
        chosen = [overrides.get(n, TaskConfig(name=n)) for n in members]
        cfg = config.model_copy(
            deep=True, update={"name": f"{config.name}-{'+'.join(members)}", "tasks": chosen}
        )
        if cfg.weights:
            cfg.weights = {k: v for k, v in cfg.weights.items() if k in members}
        return train_or_reuse(cfg, out / "runs" / f"group-{'+'.join(members)}", False, console)

    all_in_one = group_run([t.name for t in tasks])
    choices = {"all-in-one": _main_metrics(main, all_in_one["test"])}
    grouped: dict[str, dict[str, float]] = {}
    for members, serves in zip(grouping.groups, grouping.serves, strict=True):
        served = [s for s in serves if s in stl]
        if not served:
            continue
        if len(members) == 1:
            grouped.update({s: stl[s] for s in served})
            continue
        res = group_run(members)
        grouped.update(_main_metrics([by_name[s] for s in served], res["test"]))
    choices["grouping"] = grouped
    report = {}
    for name, metrics in choices.items():
        report[name] = {
            "metrics": metrics,
            "delta_m": delta_m(metrics, stl),
            "delta_m_per_task": delta_m_per_task(metrics, stl),
        }
    report["stl"] = {"metrics": stl, "delta_m": 0.0}
    return report
