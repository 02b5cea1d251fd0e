"""MTL against STL: single-task baselines and several methods/architectures over seeds.

For every seed, one single-task (STL) model per main task and one multi-task model per
(method, architecture) variant are trained on the same data, model and budget (the config's
encoder, optimiser, scheduler). Every run follows one convergence protocol
(:func:`protocol_config`, docs/protocol.md): it trains until its validation monitor has not
improved for ``patience`` epochs, within the same maximum number of epochs, and the best
validation epoch is selected; a run whose best epoch is its last is flagged "not converged".
The test split gives the reported numbers. Per variant and task the table shows each metric
over seeds, and Δm (Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks", CVPR;
:func:`mtlkit.tasks.delta_m`) on each task's primary metric against the STL model of the same
seed, with a 95 % t-interval over seeds and a decision. Auxiliary tasks are trained but left
out of Δm. The cost of each side (parameters, training time, inference latency, throughput,
peak memory) is measured too (:mod:`mtlkit.experiments.compare.efficiency`).

Every trained model is a run folder (:func:`mtlkit.experiments.run.train_run`). A re-run of
the same comparison into the same folder reuses every run whose ``results.json`` exists and
whose saved config equals the one it would train, so an interrupted comparison resumes; a run
folder that was trained on different data is an error, since the numbers would not be
comparable.

The summary over seeds and its tables are in :mod:`mtlkit.experiments.compare.summary`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from mtlkit.config import RunConfig, TaskConfig, parse_config
from mtlkit.data.multi import MultiInputData
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.experiments.compare.efficiency import (
    first_batch_per_task,
    load_models,
    measure_inference,
)
from mtlkit.experiments.compare.summary import summarise, to_csv, to_markdown
from mtlkit.experiments.run import Run, _differences, build_run, train_run
from mtlkit.files import atomic_write_text
from mtlkit.tasks import Task

__all__ = [
    "DEFAULT_PATIENCE",
    "STL_ARCHITECTURE",
    "Variant",
    "check_architectures",
    "check_methods",
    "check_same_data",
    "convergence_record",
    "main_metrics",
    "protocol_config",
    "run_compare",
    "stl_config",
    "train_or_reuse",
    "variant_config",
]

#: the architecture of the single-task baselines: one encoder and one head
STL_ARCHITECTURE = "hps"
#: epochs without improvement of the validation monitor before a run stops, when neither
#: the config (``train.patience``) nor ``--patience`` says
DEFAULT_PATIENCE = 5


@dataclass(frozen=True)
class Variant:
    """One multi-task model of a comparison: a weighting method on an architecture."""

    method: str
    architecture: str

    @property
    def label(self) -> str:
        return f"{self.method}@{self.architecture}"


def protocol_config(
    config: RunConfig, patience: int | None = None, max_epochs: int | None = None
) -> RunConfig:
    """``config`` under the convergence protocol: at most ``max_epochs`` epochs (default: the
    config's ``train.epochs``), stopping after ``patience`` epochs without improvement of the
    validation monitor (default: ``train.patience``, else :data:`DEFAULT_PATIENCE`). Every STL
    and MTL run of a comparison is derived from it, so all share the budget and the rule."""
    if patience is not None and patience < 1:
        raise ConfigError(f"compare: option 'patience' must be ≥ 1, got {patience}")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"compare: option 'max_epochs' must be ≥ 1, got {max_epochs}")
    train = config.train.model_copy(
        update={
            "epochs": max_epochs or config.train.epochs,
            "patience": patience or config.train.patience or DEFAULT_PATIENCE,
        }
    )
    return config.model_copy(deep=True, update={"train": train})


def convergence_record(
    results: dict[str, Any], config: RunConfig, model: str, task: str | None, seed: int
) -> dict[str, Any]:
    """A run's place in the protocol: its best epoch, the epochs it ran and its budget."""
    epochs_run = results.get("epochs_run")
    if epochs_run is None:  # a results.json from before epochs_run was recorded
        patience = config.train.patience or 0
        stopped = results.get("stopped_early")
        epochs_run = results["best_epoch"] + patience if stopped else config.train.epochs
    return {
        "model": model,
        "task": task,
        "seed": seed,
        "best_epoch": int(results["best_epoch"]),
        "epochs_run": int(epochs_run),
        "max_epochs": config.train.epochs,
        "patience": config.train.patience,
        "stopped_early": bool(results.get("stopped_early")),
    }


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
    return train_run(config, run_dir, progress=progress, if_exists="replace")


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


def main_metrics(tasks: Sequence[Task], test: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``task → metric → value`` of ``tasks`` (their own metrics) in a run's ``test`` results."""
    return {t.name: {m: test[t.name][m] for m in t.metrics or []} for t in tasks}


def run_compare(
    config: RunConfig,
    out_dir: Path,
    methods: Sequence[str] | None = None,
    architectures: Sequence[str] | None = None,
    seeds: int = 3,
    progress: bool = False,
    console: Console | None = None,
    *,
    patience: int | None = None,
    max_epochs: int | None = None,
    efficiency: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the STL baselines and every variant over ``seeds`` seeds under the
    convergence protocol (:func:`protocol_config`); measure their cost (``efficiency``);
    write ``compare.json``, ``compare.csv`` and ``compare.md`` into ``out_dir`` and return
    the summary (:func:`~mtlkit.experiments.compare.summary.summarise`)."""
    console = console or Console()
    if seeds < 1:
        raise ConfigError(f"compare: option 'seeds' must be ≥ 1, got {seeds}")
    config = protocol_config(config, patience, max_epochs)
    method_names = check_methods(methods or [config.weighting.name])
    arch_names = check_architectures(architectures or [config.model.architecture])
    variants = [Variant(m, a) for a in arch_names for m in method_names]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = build_run(config)
    tasks = run.tasks
    main = [t for t in tasks if not t.auxiliary]
    if not main:
        raise ConfigError("compare: every task is auxiliary; Δm needs at least one main task")
    seed_values = [config.seed + i for i in range(seeds)]
    started = time.perf_counter()
    stl: dict[int, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[int, dict[str, dict[str, float]]]] = {v.label: {} for v in variants}
    seconds: dict[str, dict[int, float]] = {"stl": {}, **{v.label: {} for v in variants}}
    params: dict[str, int] = {}
    convergence: list[dict[str, Any]] = []
    data_of: dict[str, dict[str, Any]] = {}
    for seed in seed_values:
        stl[seed] = {}
        for task in main:
            console.print(f"[bold]STL[/] {task.name} (seed {seed})")
            cfg = stl_config(config, task, seed)
            res = train_or_reuse(cfg, out_dir / "runs" / f"stl-{task.name}-seed{seed}", progress)
            stl[seed][task.name] = main_metrics([task], res["test"])[task.name]
            seconds["stl"][seed] = seconds["stl"].get(seed, 0.0) + res["train_seconds"]
            if seed == seed_values[0]:
                params["stl"] = params.get("stl", 0) + int(res["parameters"])
            convergence.append(convergence_record(res, cfg, "stl", task.name, seed))
            data_of[f"stl-{task.name}-seed{seed}"] = {"data": cfg.data.model_dump()}
        for v in variants:
            console.print(f"[bold]MTL[/] {v.label} (seed {seed})")
            cfg = variant_config(config, v, seed)
            folder = f"{v.method}-{v.architecture}-seed{seed}"
            res = train_or_reuse(cfg, out_dir / "runs" / folder, progress)
            runs[v.label][seed] = main_metrics(main, res["test"])
            seconds[v.label][seed] = res["train_seconds"]
            params[v.label] = int(res["parameters"])
            convergence.append(convergence_record(res, cfg, v.label, None, seed))
            data_of[folder] = {"data": cfg.data.model_dump()}
    check_same_data(data_of)
    costs: dict[str, dict[str, Any]] = {
        k: {
            "models": len(main) if k == "stl" else 1,
            "params": params[k],
            "train_seconds": sum(by_seed.values()) / len(by_seed),
            "train_seconds_per_seed": [by_seed[s] for s in seed_values],
        }
        for k, by_seed in seconds.items()
    }
    if efficiency:
        console.print("measuring inference latency and memory")
        try:
            _measure(costs, run, main, variants, out_dir / "runs", seed_values[0])
        except (MtlkitError, RuntimeError, StopIteration) as err:  # trained runs stay usable
            console.print(f"[yellow]could not measure inference: {err}[/]")
            for cost in costs.values():
                cost.update(latency_ms=None, throughput=None, peak_memory_mb=None)
                cost["inference_error"] = str(err)
    summary = summarise(
        stl,
        runs,
        primary={t.name: t.primary_metric or "" for t in main},
        convergence=convergence,
        efficiency=costs,
    )
    summary["config"] = config.model_dump(mode="json")
    summary["protocol"] = {
        "max_epochs": config.train.epochs,
        "patience": config.train.patience,
        "monitor": config.train.monitor,
        "selection": "best validation epoch of the monitor",
    }
    summary["tasks"] = {
        t.name: {
            "metrics": list(t.metrics or []),
            "primary": t.primary_metric,
            "auxiliary": t.auxiliary,
        }
        for t in tasks
    }
    summary["per_seed"] = {"stl": stl, "variants": runs}
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "compare.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "compare.csv", to_csv(summary))
    atomic_write_text(out_dir / "compare.md", to_markdown(summary))
    return summary


def _measure(
    costs: dict[str, dict[str, Any]],
    run: Run,
    main: Sequence[Task],
    variants: Sequence[Variant],
    runs_dir: Path,
    seed: int,
) -> None:
    """Add latency, throughput and peak memory of one seed's models to ``costs``: each
    variant's one model, and the T STL models served one after the other, on one test batch
    (the config's device)."""
    from mtlkit.train.batches import resolve_device

    device = resolve_device(run.config.train.device)
    names = [t.name for t in main]
    multi = isinstance(run.data, MultiInputData)
    if multi:  # one dataset per task: the first test batch of each, each model its own
        inputs = first_batch_per_task(run.loader("test"), names)
    else:
        inputs = next(iter(run.loader("test")))[0]
    folders = {t: runs_dir / f"stl-{t}-seed{seed}" for t in names}
    costs["stl"].update(measure_inference(load_models(folders), inputs, device, multi))
    for v in variants:
        folder = runs_dir / f"{v.method}-{v.architecture}-seed{seed}"
        costs[v.label].update(
            measure_inference(load_models({"all": folder}), inputs, device, multi)
        )
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
