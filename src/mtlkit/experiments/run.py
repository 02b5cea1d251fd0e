"""Build a run from a config, train it into a run folder, evaluate a finished run.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (per-step and
per-epoch records), ``checkpoint/`` (the latest state, for ``--resume``), ``best/`` (the
weights of the epoch selected on validation) and ``results.json`` (validation and test
metrics of the selected model).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from mtlkit.config import RunConfig, dump_config, parse_config
from mtlkit.data import DataBundle, TensorLoader, load_dataset
from mtlkit.data.multi import MultiInputData, MultiTaskLoader
from mtlkit.data.sharding import ShardedLoader, shard_split
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.files import atomic_write_text
from mtlkit.nn import ENCODERS, MTLModel, build_model
from mtlkit.plugins import import_plugins
from mtlkit.tasks import Task
from mtlkit.train import Trainer
from mtlkit.train.checkpoint import load_model_weights
from mtlkit.train.distributed import current
from mtlkit.weighting import WEIGHTINGS, Weighting, available, build


@dataclass
class Run:
    """Everything a config resolves to, ready to train."""

    config: RunConfig
    data: DataBundle
    tasks: list[Task]
    model: MTLModel
    weighting: Weighting

    def trainer(self, run_dir: Path | None = None, progress: bool = True) -> Trainer:
        """A Trainer for this run (seeded again, so the run is reproducible)."""
        cfg = self.config
        t = cfg.train
        return Trainer(
            self.model,
            self.tasks,
            self.weighting,
            optimizer=cfg.optimizer.name,
            optimizer_params=cfg.optimizer.params,
            scheduler=cfg.scheduler.name,
            scheduler_params=cfg.scheduler.params,
            epochs=t.epochs,
            grad_clip=t.grad_clip,
            monitor=t.monitor,
            patience=t.patience,
            amp=t.amp,
            device=t.device,
            seed=cfg.seed,
            deterministic=t.deterministic,
            run_dir=run_dir,
            log_every=t.log_every,
            loggers=t.loggers,
            check_inputs=t.check_inputs,
            progress=progress,
            step_mode=self.data.step_mode if isinstance(self.data, MultiInputData) else None,
            distributed=current(),
        )

    def loader(self, split: str, train: bool = False) -> Any:
        """A split's batches; under torchrun, this rank's shard (``batch_size`` per rank)."""
        size = self.config.data.batch_size if train else self.config.data.eval_batch_size
        ctx = current()
        if ctx is None:
            return self.data.loader(split, size, shuffle=train)
        if isinstance(self.data, MultiInputData):
            loader = self.data.loader(
                split, size, shuffle=train, rank=ctx.rank, world_size=ctx.world_size
            )
            if isinstance(loader, MultiTaskLoader):  # every rank must draw the same tasks
                ctx.check_same(loader.schedule(), "the multi-input task schedule")
            return loader
        if train:
            return ShardedLoader(
                self.data.split(split), size, rank=ctx.rank, world_size=ctx.world_size
            )
        return TensorLoader(shard_split(self.data.split(split), ctx.rank, ctx.world_size), size)


def resolve_tasks(config: RunConfig, data: DataBundle) -> list[Task]:
    """The dataset's tasks, selected and overridden by the config's ``tasks`` and ``weights``."""
    available = {t.name: t for t in data.tasks}
    chosen = config.tasks if config.tasks is not None else [None] * 0
    names = [t.name for t in chosen] if config.tasks is not None else list(available)
    for name in [*names, *(config.weights or {})]:
        if name not in available and isinstance(data, MultiInputData):
            raise ConfigError(
                f"task '{name}' has no dataset: under a multi-input config every task needs "
                f"its own (data.params.datasets.{name}); tasks with data: {', '.join(available)}"
            )
        if name not in available:
            raise ConfigError(
                f"task '{name}' is not a task of dataset '{data.name}' "
                f"(its tasks: {', '.join(available)})"
            )
    overrides = {t.name: t for t in chosen}
    tasks = []
    for name in names:
        base = available[name]
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        override = overrides.get(name)
        if override is not None:
            fields.update(override.model_dump(exclude_none=True, exclude={"name"}))
        if config.weights and name in config.weights:
            fields["weight"] = config.weights[name]
        task = Task(**fields)
        for metric, fn in base.metric_fns.items():  # keep bound metrics (e.g. tag names)
            if metric in task.metric_fns:
                task.metric_fns[metric] = fn
        tasks.append(task)
    return tasks


def build_weighting(config: RunConfig, tasks: list[Task]) -> Weighting:
    """The loss-balancing method, composed with an aggregator when the config names one.

    Task weights (``tasks[].weight`` or ``weights:``) are the α of ``weighting: static``;
    with any other method they would be ignored, so they are an error there.
    """
    params = dict(config.weighting.params)
    weighted = {t.name: t.weight for t in tasks if t.weight != 1.0}
    if WEIGHTINGS.lookup(config.weighting.name).takes_task_weights:
        params.setdefault("weights", {t.name: t.weight for t in tasks})
        unknown = sorted(set(params["weights"]) - {t.name for t in tasks})
        if unknown:
            raise ConfigError(
                f"field 'weighting.params.weights': unknown task(s) {', '.join(unknown)}; "
                f"the tasks are {', '.join(t.name for t in tasks)}"
            )
    elif weighted:
        users = " or ".join(
            f"'weighting: {n}'" for n in available() if WEIGHTINGS.lookup(n).takes_task_weights
        )
        raise ConfigError(
            f"task weights {weighted} are only used by {users}; "
            f"'{config.weighting.name}' sets its own weights"
        )
    aggregator = config.aggregator
    return build(
        {**params, "name": config.weighting.name},
        None if aggregator is None else {**aggregator.params, "name": aggregator.name},
    )


def build_run(config: RunConfig | dict[str, Any]) -> Run:
    """Resolve a config into data, tasks, model and weighting (seeded by ``config.seed``)."""
    if not isinstance(config, RunConfig):
        config = parse_config(config)
    import_plugins(config.imports)
    torch.manual_seed(config.seed)
    data = load_dataset(config.data.name, **config.data.params)
    _training_strategy(config, data)
    tasks = resolve_tasks(config, data)
    if len(tasks) < len(data.tasks):
        data = data.select_tasks([t.name for t in tasks])
    enc_name, enc_params = data.encoder
    if config.model.encoder is not None:
        if config.model.encoder.name == enc_name:
            enc_params = {**enc_params, **config.model.encoder.params}
        else:
            enc_name, enc_params = config.model.encoder.name, config.model.encoder.params
    try:
        encoder = ENCODERS.build(enc_name, **enc_params)
    except ConfigError as err:
        raise ConfigError(f"field 'model.encoder': {err}") from None
    model = build_model(config.model.architecture, encoder, tasks, **config.model.params)
    return Run(config, data, tasks, model, build_weighting(config, tasks))


def _training_strategy(config: RunConfig, data: DataBundle | MultiInputData) -> None:
    """Apply ``train.step_mode``, ``train.sampler`` and ``train.steps_per_epoch`` to
    multi-input data (the epochs and seed are the run's); an error for joint data."""
    t = config.train
    if not isinstance(data, MultiInputData):
        given = [k for k in ("step_mode", "sampler", "steps_per_epoch") if getattr(t, k)]
        if given:
            raise ConfigError(
                f"field 'train.{given[0]}' applies to multi-input data (one dataset per task, "
                f"e.g. data.name: multi_input); dataset '{data.name}' gives joint batches"
            )
        return
    if t.step_mode is not None:
        data.step_mode = t.step_mode
    if t.sampler is not None:
        data.sampler = {"name": t.sampler.name, **t.sampler.params}
    if t.steps_per_epoch is not None:
        data.steps_per_epoch = t.steps_per_epoch
    data.epochs, data.seed = t.epochs, config.seed


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh folder ``root/<name>-<timestamp>`` (with a suffix if it exists)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


def train_run(
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train the configured run into ``run_dir``; returns (and writes) ``results.json``."""
    run_dir = Path(run_dir)
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise MtlkitError(f"cannot resume: {run_dir} has no config.yaml")
        previous = parse_config(yaml.safe_load(saved.read_text(encoding="utf-8")))
        differing = _differences(
            previous.model_dump(), config.model_dump(), skip={"train.epochs", "train.loggers"}
        )
        if differing:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the saved one in "
                f"{', '.join(differing)}"
            )
    main = (ctx := current()) is None or ctx.is_main  # under torchrun, rank 0 writes files
    if progress and main:  # something on screen before data loading, which can take a while
        print(f"{config.name}: loading data '{config.data.name}'...", file=sys.stderr, flush=True)
    run = build_run(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    trainer = run.trainer(run_dir, progress=progress)
    started = time.perf_counter()
    fit = trainer.fit(
        run.loader("train", train=True),
        run.loader("val"),
        resume=run_dir if resume else None,
        stop_after=stop_after,
    )
    results = {
        "name": config.name,
        "best_epoch": fit.best_epoch,
        "monitor": {"name": config.train.monitor, "value": fit.best_value},
        "stopped_early": fit.stopped_early,
        "val": trainer.evaluate(run.loader("val")),
        "test": trainer.evaluate(run.loader("test")),
        "train_seconds": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "tasks": {
            t.name: {"kind": t.kind, "metrics": list(t.metrics or []), "auxiliary": t.auxiliary}
            for t in run.tasks
        },
    }
    if main:
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    return results


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """Evaluate the selected (``best/``) or latest weights of a finished run on ``split``."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MtlkitError(f"{run_dir} is not a run folder (no config.yaml)")
    config = parse_config(yaml.safe_load(saved.read_text(encoding="utf-8")))
    run = build_run(config)
    weights = run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "checkpoint"
    load_model_weights(weights, run.model)
    trainer = run.trainer(None, progress=False)
    return trainer.evaluate(run.loader(split))


def _differences(a: Any, b: Any, skip: set[str], prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if path not in skip:
                out += _differences(a.get(key), b.get(key), skip, path)
        return out
    return [] if a == b else [prefix or "(root)"]
