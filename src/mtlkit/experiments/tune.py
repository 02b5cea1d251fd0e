"""Static task weights (and method hyper-parameters) by k-fold cross-validation with Optuna.

The weights α of L = Σ α_i L_i are searched on the simplex, scaled so that Σ α_i = T (equal
weights are then all 1, as with ``ew``). A point is drawn uniformly on the simplex by the
standard construction α_i ∝ −log u_i with u_i ~ U(0, 1) (normalised exponentials are
Dirichlet(1, ..., 1)), so the sampler (TPE, Bergstra et al. 2011, "Algorithms for
Hyper-Parameter Optimization", NeurIPS; Akiba et al. 2019, "Optuna", KDD) searches the u_i.
Equal weights are always the first trial.

The objective is the mean validation Δm (Maninis et al. 2019) across k folds of the *training*
split: for fold f the model trains on the other folds and is selected and scored on fold f,
against single-task models trained and scored the same way. The validation and test splits of
the dataset are never used. The study lives in SQLite in the output folder, so re-running the
same command resumes it; the single-task baselines are cached there too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from mtlkit.config import RunConfig, dump_config
from mtlkit.data import DataBundle, TensorSplit
from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.experiments.compare import stl_config
from mtlkit.experiments.run import build_run
from mtlkit.files import atomic_write_text
from mtlkit.tasks import delta_m
from mtlkit.weighting import WEIGHTINGS, Static, available


def parse_param_ranges(specs: list[str] | None) -> dict[str, tuple[float, float, bool]]:
    """``["c=0.1:0.9", "lr=1e-4:1e-1:log"]`` → ``{"c": (0.1, 0.9, False), ...}``."""
    out: dict[str, tuple[float, float, bool]] = {}
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        parts = rest.split(":")
        try:
            if not sep or not name or len(parts) not in (2, 3):
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) == 3 and not log:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"tune: option 'param' expects NAME=LOW:HIGH or NAME=LOW:HIGH:log, got '{spec}'"
            ) from None
        if not low < high or (log and low <= 0):
            raise ConfigError(
                f"tune: option 'param' {name}: need LOW < HIGH (and LOW > 0 with log), got '{spec}'"
            )
        out[name] = (low, high, log)
    return out


def simplex_weights(u: Mapping[str, float]) -> dict[str, float]:
    """α_i = T · e_i / Σ e with e_i = −log u_i: uniform on the (scaled) simplex for uniform u."""
    e = {t: -math.log(min(max(v, 1e-12), 1.0 - 1e-12)) for t, v in u.items()}
    total = sum(e.values())
    return {t: len(e) * v / total for t, v in e.items()}


def fold_bundle(data: DataBundle, folds: int, fold: int, seed: int) -> DataBundle:
    """The training split cut into ``folds`` folds: train on the others, validate on ``fold``.

    The bundle's ``test`` is the validation fold too (nothing reads it); the dataset's own
    validation and test splits are dropped."""
    n = len(data.train)
    if folds > n:
        raise ConfigError(f"tune: option 'folds' ({folds}) exceeds the training samples ({n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    held = parts[fold]
    kept = torch.cat([p for i, p in enumerate(parts) if i != fold])

    def take(idx: torch.Tensor, name: str) -> TensorSplit:
        inputs, targets = data.train[idx]
        return TensorSplit(inputs, targets, name)

    val = take(held, "val")
    return DataBundle(data.name, take(kept, "train"), val, val, data.tasks, data.encoder)


def _fit_val(config: RunConfig, bundle: DataBundle) -> dict[str, dict[str, float]]:
    """Validation metrics of the model of ``config`` trained on ``bundle``'s training part."""
    run = build_run(config)
    names = [t.name for t in run.tasks]
    run.data = bundle.select_tasks(names) if len(names) < len(bundle.tasks) else bundle
    trainer = run.trainer(None, progress=False)
    trainer.fit(run.loader("train", train=True), run.loader("val"))
    return trainer.evaluate(run.loader("val"))


def trial_config(
    config: RunConfig, weights: dict[str, float] | None, params: dict[str, float]
) -> RunConfig:
    """The config of one trial: static ``weights`` and/or the method's ``params``."""
    if weights is not None:
        weighting = config.weighting.model_copy(
            update={"name": Static.name, "params": {"weights": weights}}
        )
        tasks = (
            [t.model_copy(update={"weight": None}) for t in config.tasks] if config.tasks else None
        )
        return config.model_copy(
            deep=True, update={"weighting": weighting, "weights": None, "tasks": tasks}
        )
    weighting = config.weighting.model_copy(
        update={"params": {**config.weighting.params, **params}}
    )
    return config.model_copy(deep=True, update={"weighting": weighting})


def run_tune(
    config: RunConfig,
    out_dir: str | Path,
    trials: int = 20,
    folds: int = 3,
    params: dict[str, tuple[float, float, bool]] | None = None,
    weights: bool | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Search weights/hyper-parameters; write ``study.db``, ``tune.json`` and ``tuned.yaml``."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError("optuna", "tune", "mtlkit tune") from None
    console = console or Console()
    if trials < 1:
        raise ConfigError(f"tune: option 'trials' must be ≥ 1, got {trials}")
    if folds < 2:
        raise ConfigError(f"tune: option 'folds' must be ≥ 2, got {folds}")
    params = dict(params or {})
    method = config.weighting.name
    static = WEIGHTINGS.lookup(method).static_weights
    search_weights = static if weights is None else weights
    if search_weights and not static:
        fixed = " or ".join(f"'{n}'" for n in available() if WEIGHTINGS.lookup(n).static_weights)
        raise ConfigError(
            f"tune: static weights are searched with weighting {fixed}, not "
            f"'{method}' (it sets its own weights); search its options with --param"
        )
    if search_weights and params:
        raise ConfigError(
            f"tune: method '{method}' has no hyper-parameters to search beside the weights "
            f"(got --param {', '.join(params)})"
        )
    if not search_weights and not params:
        raise ConfigError("tune: nothing to search: no weights and no --param ranges")
    if params:
        from mtlkit.registry import check_params

        check_params(WEIGHTINGS.lookup(method), params, f"tune: weighting '{method}'")
    run = build_run(config)
    tasks = run.tasks
    main = [t for t in tasks if not t.auxiliary]
    if not main:
        raise ConfigError("tune: every task is auxiliary; Δm needs at least one main task")
    out = Path(out_dir)
    odd = sorted(set("?#%") & set(str(out.resolve())))
    if odd:  # they would end the SQLite URL of the study and put it somewhere else
        raise ConfigError(
            f"tune: the output folder {out} contains {' '.join(odd)}, which the study "
            "database's URL cannot hold; choose a folder name without them"
        )
    out.mkdir(parents=True, exist_ok=True)
    bundles = [fold_bundle(run.data, folds, f, config.seed) for f in range(folds)]

    baselines = _baselines(config, main, bundles, out / "baselines.json", console)

    def objective(trial: Any) -> float:
        w = None
        if search_weights:
            w = simplex_weights({t.name: trial.suggest_float(f"u_{t.name}", 0, 1) for t in tasks})
            trial.set_user_attr("weights", w)
        values = {
            name: trial.suggest_float(name, low, high, log=log)
            for name, (low, high, log) in params.items()
        }
        cfg = trial_config(config, w, values)
        scores = []
        for f, bundle in enumerate(bundles):
            metrics = _fit_val(cfg, bundle)
            mtl = {t.name: {m: metrics[t.name][m] for m in t.metrics or []} for t in main}
            scores.append(delta_m(mtl, baselines[f]))
        trial.set_user_attr("fold_delta_m", scores)
        return float(sum(scores) / len(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="tune",
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        load_if_exists=True,
    )
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not study.trials:
        first: dict[str, float] = {}
        if search_weights:
            first.update({f"u_{t.name}": math.exp(-1.0) for t in tasks})
        first.update({n: config.weighting.params.get(n, lo) for n, (lo, _, _) in params.items()})
        study.enqueue_trial(first)
    remaining = trials - len(finished)
    if remaining > 0:
        console.print(f"tune: {remaining} trial(s) × {folds} folds ({len(finished)} done before)")
        study.optimize(objective, n_trials=remaining)
    best = study.best_trial
    best_weights = best.user_attrs.get("weights")
    best_params = {n: best.params[n] for n in params}
    tuned = trial_config(config, best_weights, best_params)
    tuned = tuned.model_copy(update={"name": f"{config.name}-tuned"})
    result = {
        "best_delta_m": best.value,
        "fold_delta_m": best.user_attrs.get("fold_delta_m"),
        "weights": best_weights,
        "params": best_params,
        "trials": len(study.trials),
        "folds": folds,
        "history": [
            {
                "number": t.number,
                "value": t.value,
                "weights": t.user_attrs.get("weights"),
                "params": {n: t.params[n] for n in params if n in t.params},
            }
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
        ],
    }
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2))
    atomic_write_text(out / "tuned.yaml", dump_config(tuned))
    return result


def _baselines(
    config: RunConfig,
    main: list[Any],
    bundles: list[DataBundle],
    path: Path,
    console: Console,
) -> list[dict[str, dict[str, float]]]:
    """Each fold's single-task validation metrics, cached in ``path`` with the config."""
    key = json.loads(json.dumps(config.model_dump(mode="json")))
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("config") == key and len(saved.get("folds", [])) == len(bundles):
            return saved["folds"]
        raise ConfigError(
            f"tune: {path.parent} holds a study of a different config or fold count; "
            "use a fresh --out folder"
        )
    out = []
    for f, bundle in enumerate(bundles):
        fold: dict[str, dict[str, float]] = {}
        for task in main:
            console.print(f"tune: single-task baseline {task.name}, fold {f + 1}/{len(bundles)}")
            metrics = _fit_val(stl_config(config, task, config.seed), bundle)
            fold[task.name] = {m: metrics[task.name][m] for m in task.metrics or []}
        out.append(fold)
    atomic_write_text(path, json.dumps({"config": key, "folds": out}, indent=2))
    return out
