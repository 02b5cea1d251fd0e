"""Build a run from a config, train it into a run folder, evaluate a finished run.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (per-step and
per-epoch records), ``checkpoint/`` (the latest state, for ``--resume``), ``best/`` (the
weights of the epoch selected on validation) and ``results.json`` (validation and test
metrics of the selected model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from mtlkit.config import RunConfig, dump_config, load_yaml, parse_config
from mtlkit.data import DataBundle, TensorLoader, TensorSplit, load_dataset
from mtlkit.data.multi import MultiInputData, MultiTaskLoader
from mtlkit.data.sharding import ShardedLoader, shard_split
from mtlkit.errors import ConfigError, DatasetError, MtlkitError
from mtlkit.files import RunLock, atomic_write_text, read_text
from mtlkit.nn import ENCODERS, MTLModel, build_model
from mtlkit.plugins import import_plugins
from mtlkit.tasks import Task
from mtlkit.train import Trainer
from mtlkit.train.batches import resolve_device
from mtlkit.train.checkpoint import load_model_weights
from mtlkit.train.distributed import current
from mtlkit.train.fsdp import make_strategy
from mtlkit.train.runfiles import check_resumable
from mtlkit.weighting import WEIGHTINGS, Weighting, available, build, subsample


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
            distributed=make_strategy(current(), t.strategy),
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
            if "primary_metric" in fields:  # the config's name of Task.primary
                fields["primary"] = fields.pop("primary_metric")
            elif override.metrics is not None and fields.get("primary") not in override.metrics:
                fields["primary"] = None  # the dataset's choice is not among the new metrics
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
    method = build(
        {**params, "name": config.weighting.name},
        None if aggregator is None else {**aggregator.params, "name": aggregator.name},
    )
    k = config.train.tasks_per_step
    if k is None:
        return method
    if k > len(tasks):
        raise ConfigError(
            f"field 'train.tasks_per_step': {k} tasks per step, but the run has "
            f"{len(tasks)} task(s); give at most {len(tasks)} (or leave it out)"
        )
    return subsample(method, k, seed=config.seed)


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
    check_data(data, tasks)
    enc_name, enc_params = encoder_spec(config, data.encoder)
    model = build_run_model(config, (enc_name, enc_params), tasks)
    return Run(config, data, tasks, model, build_weighting(config, tasks))


def encoder_spec(
    config: RunConfig, default: tuple[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """The encoder a run builds: the dataset's ``default``, overridden by ``model.encoder``."""
    enc_name, enc_params = default
    if config.model.encoder is not None:
        if config.model.encoder.name == enc_name:
            enc_params = {**enc_params, **config.model.encoder.params}
        else:
            enc_name, enc_params = config.model.encoder.name, config.model.encoder.params
    return enc_name, dict(enc_params)


def build_run_model(
    config: RunConfig, encoder: tuple[str, dict[str, Any]], tasks: list[Task]
) -> MTLModel:
    """The run's model from its encoder spec and tasks (no data needed)."""
    try:
        built = ENCODERS.build(encoder[0], **encoder[1])
    except ConfigError as err:
        raise ConfigError(f"field 'model.encoder': {err}") from None
    return build_model(config.model.architecture, built, tasks, **config.model.params)


def check_data(data: DataBundle | MultiInputData, tasks: list[Task]) -> None:
    """The checks at the data boundary, each error naming the split, the task and the input:
    no split is empty, every floating-point input is finite, and every task has at least one
    label in the train and val splits (otherwise its loss and metrics are undefined). A split
    read from disk (:class:`~mtlkit.data.base.DatasetSplit`) is only checked for emptiness here;
    its examples are checked as they are read."""
    for split_name in ("train", "val", "test"):
        if isinstance(data, MultiInputData):
            per_task: dict[str | None, TensorSplit] = dict(getattr(data, split_name))
        else:
            per_task = {None: data.split(split_name)}
        for owner, split in per_task.items():
            where = f"dataset '{data.name}', {split_name} split" + (
                f" of task '{owner}'" if owner is not None else ""
            )
            if len(split) == 0:
                raise DatasetError(f"{where}: the split is empty")
            if not isinstance(split, TensorSplit):  # read from disk: checked as it loads
                continue
            inputs = split.inputs if isinstance(split.inputs, dict) else {"inputs": split.inputs}
            for key, x in inputs.items():
                if isinstance(x, torch.Tensor) and x.is_floating_point():
                    bad = ~torch.isfinite(x)
                    if bad.any():
                        row = int(bad.reshape(len(x), -1).any(1).nonzero()[0, 0])
                        raise DatasetError(
                            f"{where}: input '{key}' has non-finite values (NaN or inf), "
                            f"first in sample {row}; clean or impute them before training"
                        )
            if split_name == "test":
                continue
            for task in tasks:
                target = split.targets.get(task.name)
                if target is not None and not task.label_mask(target).any():
                    raise DatasetError(
                        f"{where}: task '{task.name}' has no label at all (every target is "
                        f"missing); its loss and metrics would be undefined"
                    )


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


def safe_name(name: str) -> str:
    """``name`` as one folder name: characters other than letters, digits, '.', '_' and '-'
    become '-', and it never starts with '.' (so never '..')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).lstrip(".-") or "run"
    return cleaned[:100]


def new_run_dir(root: str | Path, name: str, create: bool = False) -> Path:
    """A fresh path ``root/<name>-<timestamp>`` (with a suffix if it exists), always inside
    ``root`` (the name is sanitised by :func:`safe_name`); created only when asked (the
    commands create it once the config has been checked)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{safe_name(name)}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    if create:
        path.mkdir(parents=True)
    return path


#: what a run folder holds once a run has started in it
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "checkpoint",
    "checkpoint.prev",
    "best",
    "results.json",
)


def describe_run(run_dir: Path) -> str | None:
    """What ``run_dir`` holds: "a finished run", "an unfinished run (...)", or None when it
    holds no run (absent or without run files)."""
    if not run_dir.is_dir() or not any((run_dir / f).exists() for f in RUN_FILES):
        return None
    if (run_dir / "results.json").is_file():
        return "a finished run"
    return "an unfinished run"


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to a fresh ``<run_dir>.old-<timestamp>`` beside it."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target, i = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while target.exists():
        target, i = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{i}"), i + 1
    os.replace(run_dir, target)
    return target


def _prepare_fresh(run_dir: Path, if_exists: str) -> None:
    """Make ``run_dir`` ready for a new run; ``if_exists``: "error" (a run there is an error
    that says what to do), "overwrite" (move it aside) or "replace" (delete an unfinished
    run's files, for commands that reuse finished runs)."""
    held = RunLock(run_dir).holder() if run_dir.is_dir() else None
    if held is not None:
        RunLock(run_dir).acquire()  # raises: in use
    found = describe_run(run_dir)
    if found is None:
        return
    if if_exists == "overwrite":
        aside = move_aside(run_dir)
        warnings.warn(f"{run_dir} held {found}; moved it to {aside}", stacklevel=3)
    elif if_exists == "replace" and found != "a finished run":
        for name in (*RUN_FILES, ".checkpoint.tmp", ".checkpoint.old", "tensorboard"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    else:
        raise MtlkitError(
            f"{run_dir} already holds {found}: continue it with --resume {run_dir}, "
            f"move it aside with --overwrite, or choose another --out"
        )


def train_run(
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    if_exists: str = "error",
) -> dict[str, Any]:
    """Train the configured run into ``run_dir``; returns (and writes) ``results.json``.

    Everything is checked before the run folder is touched: the config and its components,
    the data, the device, and (``resume``) the saved config, checkpoint, ``best/`` and
    ``metrics.jsonl``. A run already in ``run_dir`` is never silently replaced: ``if_exists``
    is "error" (the default), "overwrite" (move it aside to ``<run_dir>.old-<time>``) or
    "replace" (an unfinished run's files are deleted; a finished run is an error). A lock
    file keeps a second writer out while the run trains.
    """
    run_dir = Path(run_dir)
    if if_exists not in ("error", "overwrite", "replace"):
        raise ConfigError(f"if_exists must be error, overwrite or replace, got '{if_exists}'")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be ≥ 1 (an epoch to stop after), got {stop_after}")
    main = (ctx := current()) is None or ctx.is_main  # under torchrun, rank 0 writes files
    if resume:
        check_resume(config, run_dir)
    if progress and main:  # something on screen before data loading, which can take a while
        print(f"{config.name}: loading data '{config.data.name}'...", file=sys.stderr, flush=True)
    run = build_run(config)
    resolve_device(config.train.device)
    trainer = run.trainer(run_dir, progress=progress)  # builds optimiser, scheduler: checks
    lock = RunLock(run_dir)
    if main:
        if not resume:
            _prepare_fresh(run_dir, if_exists)
        lock.acquire()
    try:
        if main:
            atomic_write_text(run_dir / "config.yaml", dump_config(config))
            from mtlkit.experiments.inference import write_model_spec  # imports this module

            write_model_spec(run_dir, run)  # what load_run reads
        return _train(run, trainer, run_dir, resume, stop_after, main)
    finally:
        lock.release()


def check_resume(config: RunConfig, run_dir: Path) -> int:
    """Check, without changing anything, that ``run_dir`` can be resumed with ``config``:
    its saved config (only ``train.epochs`` may differ), its checkpoint (or the previous
    one), ``best/`` and ``metrics.jsonl``; the epoch it will continue after."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MtlkitError(f"cannot resume: {run_dir} has no config.yaml (not a run folder)")
    try:
        previous = parse_config(load_yaml(read_text(saved, "saved config")))
    except (ConfigError, yaml.YAMLError) as err:
        raise MtlkitError(f"cannot resume: the saved config {saved} is damaged ({err})") from None
    differing = _differences(
        previous.model_dump(), config.model_dump(), skip={"train.epochs", "train.loggers"}
    )
    if differing:
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from the saved one in "
            f"{', '.join(differing)}"
        )
    try:
        return check_resumable(run_dir)
    except MtlkitError as err:
        raise MtlkitError(f"cannot resume {run_dir}: {err}") from None


def _train(
    run: Run, trainer: Trainer, run_dir: Path, resume: bool, stop_after: int | None, main: bool
) -> dict[str, Any]:
    config = run.config
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
        "epochs_run": trainer.epoch,
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
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split '{split}'; available: train, val, test")
    try:
        config = parse_config(load_yaml(read_text(saved, "saved config")))
    except yaml.YAMLError as err:
        raise MtlkitError(f"the saved config {saved} is damaged ({err})") from None
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
