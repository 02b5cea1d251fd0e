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

A cross-validated optimum is not an answer by itself: the best of many trials on the same folds
is biased upwards, and a weighting can beat equal weights while every candidate loses to one
model per task. So the tuned weights are then checked on the test split, which no fold has seen,
against equal weights and against single-task models, over one or more seeds (95 % Student-t
intervals, paired by seed, when there are two or more), and :func:`holdout_advice` turns that
into a plain sentence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
from mtlkit.tasks import decide, delta_m, interval
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
    holdout_seeds: int = 1,
) -> dict[str, Any]:
    """Search weights/hyper-parameters; write ``study.db``, ``tune.json`` and ``tuned.yaml``.

    Then check the answer on held-out data (``result["holdout"]``, skipped with
    ``holdout_seeds=0``): the tuned weights, equal weights and the single-task models are
    trained on the whole training split for ``holdout_seeds`` seeds and scored on the test
    split, which the folds never use; ``holdout["advice"]`` says plainly "use single-task
    models" when both lose to them, or that the tuned weights are no better than equal weights
    when that is so (:func:`holdout_advice`). ``result["cv_vs_equal"]`` compares the best trial
    with the equal-weights trial fold by fold (optimistic: the best of many trials on the same
    folds)."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError("optuna", "tune", "mtlkit tune") from None
    console = console or Console()
    if trials < 1:
        raise ConfigError(f"tune: option 'trials' must be ≥ 1, got {trials}")
    if folds < 2:
        raise ConfigError(f"tune: option 'folds' must be ≥ 2, got {folds}")
    if holdout_seeds < 0:
        raise ConfigError(f"tune: option 'holdout_seeds' must be ≥ 0, got {holdout_seeds}")
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
    result: dict[str, Any] = {
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
                "fold_delta_m": t.user_attrs.get("fold_delta_m"),
                "weights": t.user_attrs.get("weights"),
                "params": {n: t.params[n] for n in params if n in t.params},
            }
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
        ],
    }
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    first_trial = min(completed, key=lambda t: t.number)
    best_folds = best.user_attrs.get("fold_delta_m") or []
    equal_folds = first_trial.user_attrs.get("fold_delta_m") or []
    if best_folds and len(best_folds) == len(equal_folds):
        gain = [a - b for a, b in zip(best_folds, equal_folds, strict=True)]
        result["cv_vs_equal"] = {
            **interval(gain),
            "values": gain,
            "note": "best trial − first trial (equal weights / the config's options), per fold; "
            "optimistic, since the best trial was chosen on these folds",
        }
    atomic_write_text(out / "tuned.yaml", dump_config(tuned))
    result["holdout"] = None
    if holdout_seeds:
        tuned_is_ew = best.number == first_trial.number and search_weights
        result["holdout"] = _holdout(
            config,
            tuned,
            main,
            holdout_seeds,
            out,
            console,
            tuned_is_ew=tuned_is_ew,
            cv_best=best.value,
            best_trial=best.number,
        )
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2))
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


# ---------------------------------------------------------------------------- held-out check


def decide_values(values: Sequence[float]) -> str:
    """:func:`~mtlkit.tasks.decide` on the 95 % t-interval of the mean of ``values``."""
    return decide(interval(values)["ci"])


def _describe(values: Sequence[float], unit: str = "%") -> str:
    s = interval(values)
    if s["ci"] is None:
        return f"{s['mean']:+.2f} {unit} (one seed: interval n/a)"
    lo, hi = s["ci"]
    return f"{s['mean']:+.2f} {unit} (95 % CI {lo:+.2f} … {hi:+.2f}, t over {s['n']} seeds)"


def holdout_advice(
    tuned: Sequence[float],
    ew: Sequence[float],
    *,
    tuned_is_ew: bool = False,
    cv_best: float | None = None,
) -> str:
    """The plain advice of ``mtlkit tune`` from held-out Δm (in %, against the single-task
    models, one value per seed, paired by seed) of the tuned weights and of equal weights.

    - every candidate loses to the single-task models (its interval is below 0; with one seed,
      its value is): "use single-task models";
    - both below 0 on every seed, with intervals that still reach 0: "lean towards single-task
      models";
    - otherwise the tuned weights against equal weights, paired by seed: better only when the
      interval of the difference is above 0; else "no better than equal weights".
    ``cv_best`` (the best trial's mean validation Δm) below 0 adds that every trial also lost
    in cross-validation; ``tuned_is_ew``: the search kept equal weights."""
    if not tuned or len(tuned) != len(ew):
        raise ConfigError(
            f"tune: the held-out Δm needs one value per seed for both the tuned weights and "
            f"equal weights, got {len(tuned)} and {len(ew)}"
        )
    n = len(tuned)

    def loses(values: Sequence[float]) -> bool:
        return decide_values(values) == "worse" if n > 1 else float(values[0]) < 0

    one_seed = " One seed gives no interval: raise --holdout-seeds to confirm." if n == 1 else ""
    if tuned_is_ew:
        both = f"equal weights, which the search kept (Δm {_describe(ew)}),"
    else:
        both = (
            f"both the tuned weights (Δm {_describe(tuned)}) and equal weights (Δm {_describe(ew)})"
        )
    if loses(tuned) and loses(ew):
        cv = (
            f" Every trial also lost in cross-validation (best mean validation Δm "
            f"{cv_best:+.2f} %)."
            if cv_best is not None and cv_best < 0
            else ""
        )
        return (
            f"Use single-task models: on held-out test data {both} do worse than one "
            f"model per task.{cv}{one_seed}"
        )
    if n > 1 and all(v < 0 for v in [*tuned, *ew]):
        return (
            f"Lean towards single-task models: {both} did worse than one model per task on "
            f"every one of the {n} held-out seeds, though the intervals still reach 0; more "
            "seeds would settle it."
        )
    if tuned_is_ew:
        head = (
            "The search kept equal weights (no trial beat them in cross-validation); "
            f"held-out Δm {_describe(ew)} against single-task models"
        )
        return head + _against_stl(ew, n) + "." + one_seed
    diff = [a - b for a, b in zip(tuned, ew, strict=True)]
    if n > 1 and decide_values(diff) == "better":
        head = (
            f"The tuned weights beat equal weights on held-out data by {_describe(diff, 'points')}"
        )
        return (
            head
            + "; against single-task models: Δm "
            + _describe(tuned)
            + _against_stl(tuned, n)
            + "."
        )
    if n == 1 and diff[0] > 0:
        return (
            f"The tuned weights are ahead of equal weights by {diff[0]:+.2f} points of Δm on one "
            f"held-out seed, which cannot tell them from noise; equal weights are as good a "
            f"choice until more seeds say otherwise (Δm tuned {_describe(tuned)}, equal "
            f"{_describe(ew)}).{one_seed}"
        )
    return (
        f"The tuned weights are no better than equal weights on held-out data (tuned − equal "
        f"Δm {_describe(diff, 'points')}): keep equal weights; they have Δm {_describe(ew)}"
        + _against_stl(ew, n)
        + "."
        + one_seed
    )


def _against_stl(values: Sequence[float], n: int) -> str:
    if n == 1:
        return (
            ", ahead of single-task models on this seed"
            if values[0] > 0
            else ", behind single-task models on this seed"
        )
    return {
        "better": ", better than single-task models",
        "worse": ", worse than single-task models",
        "no detectable difference": ", no detectable difference from single-task models",
    }[decide_values(values)]


def _holdout(
    config: RunConfig,
    tuned: RunConfig,
    main: list[Any],
    seeds: int,
    out: Path,
    console: Console,
    *,
    tuned_is_ew: bool,
    cv_best: float | None,
    best_trial: int,
) -> dict[str, Any]:
    """Train the tuned weights, equal weights and the single-task models on the whole training
    split (selected on the validation split, as ``mtlkit train`` does) for ``seeds`` seeds,
    score them on the test split, which the folds never touch, and advise."""
    from mtlkit.experiments.compare import main_metrics, train_or_reuse

    ew_base = config.model_copy(
        deep=True,
        update={
            "weighting": config.weighting.model_copy(update={"name": "ew", "params": {}}),
            "weights": None,
            "aggregator": None,
            "tasks": (
                [t.model_copy(update={"weight": None}) for t in config.tasks]
                if config.tasks
                else None
            ),
        },
    )
    per_seed: dict[str, list[dict[str, Any]]] = {"tuned": [], "ew": [], "stl": []}
    dm: dict[str, list[float]] = {"tuned": [], "ew": []}
    root = out / "holdout"
    for i in range(seeds):
        seed = config.seed + i
        console.print(f"tune: held-out check, seed {seed} ({i + 1}/{seeds})")
        stl: dict[str, Any] = {}
        for task in main:
            cfg = stl_config(config, task, seed)
            res = train_or_reuse(cfg, root / f"stl-{task.name}-seed{seed}", False, console)
            stl.update(main_metrics([task], res["test"]))
        ew_cfg = ew_base.model_copy(update={"seed": seed, "name": f"{config.name}-ew-seed{seed}"})
        ew = main_metrics(
            main, train_or_reuse(ew_cfg, root / f"ew-seed{seed}", False, console)["test"]
        )
        if tuned_is_ew:
            mine = ew
        else:
            t_cfg = tuned.model_copy(update={"seed": seed, "name": f"{tuned.name}-seed{seed}"})
            # named by the trial: a resumed study with a new best trains a new run
            folder = root / f"tuned-trial{best_trial}-seed{seed}"
            res = train_or_reuse(t_cfg, folder, False, console)
            mine = main_metrics(main, res["test"])
        per_seed["stl"].append(stl)
        per_seed["ew"].append(ew)
        per_seed["tuned"].append(mine)
        dm["tuned"].append(delta_m(mine, stl))
        dm["ew"].append(delta_m(ew, stl))
    result: dict[str, Any] = {name: _mean_metrics(runs) for name, runs in per_seed.items()}
    result.update(
        {
            "seeds": [config.seed + i for i in range(seeds)],
            "split": "test",
            "per_seed": per_seed,
            "delta_m": {name: {**interval(v), "values": v} for name, v in dm.items()},
            "tuned_minus_ew": interval([a - b for a, b in zip(dm["tuned"], dm["ew"], strict=True)]),
            "decision": {name: decide_values(v) for name, v in dm.items()},
            "interval": "t (95 % Student t over seeds, paired by seed)",
            "advice": holdout_advice(
                dm["tuned"], dm["ew"], tuned_is_ew=tuned_is_ew, cv_best=cv_best
            ),
        }
    )
    return result


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """task → metric → mean over seeds."""
    first = runs[0]
    return {
        task: {m: sum(r[task][m] for r in runs) / len(runs) for m in metrics}
        for task, metrics in first.items()
    }


def print_tune(result: dict[str, Any], console: Console) -> None:
    """The tuned weights, the cross-validated comparison and the held-out check with its
    advice."""
    from rich.table import Table

    if result["weights"]:
        console.print(
            "best weights: " + ", ".join(f"{t}={w:.3f}" for t, w in result["weights"].items())
        )
    if result["params"]:
        console.print(
            "best options: " + ", ".join(f"{k}={v:.4g}" for k, v in result["params"].items())
        )
    folds = result["folds"]
    console.print(f"mean validation Δm over {folds} folds: {result['best_delta_m']:+.2f} %")
    cv = result.get("cv_vs_equal")
    if cv and all(v == 0 for v in cv["values"]):
        console.print("the best trial is the first one: nothing beat it in cross-validation")
    elif cv:
        span = "" if cv["ci"] is None else f" (95 % CI {cv['ci'][0]:+.2f} … {cv['ci'][1]:+.2f})"
        console.print(
            f"best trial − first trial, per fold: {cv['mean']:+.2f} points{span}; optimistic, "
            "the best trial was chosen on these folds"
        )
    hold = result.get("holdout")
    if not hold:
        return
    table = Table(title=f"Held-out check on the test split (seeds {hold['seeds']})")
    for column in ("model", "Δm vs single-task models", "decision"):
        table.add_column(column)
    labels = {"tuned": "tuned weights", "ew": "equal weights"}
    for name, label in labels.items():
        table.add_row(label, _describe(hold["delta_m"][name]["values"]), hold["decision"][name])
    table.add_row("single-task models", "0 (reference)", "")
    console.print(table)
    console.print(f"[bold]Advice:[/bold] {hold['advice']}")
