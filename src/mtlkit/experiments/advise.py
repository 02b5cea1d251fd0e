"""``mtlkit advise``: the three questions of an MTL project answered for one config, on one page.

1. **Which tasks to learn together?** The task affinity (TAG lookahead and gradient cosines,
   :func:`mtlkit.experiments.affinity.run_affinity`), with a standard error per pair, and the
   best grouping into two models (:func:`mtlkit.experiments.group.run_group`) with its
   robustness over bootstrap resamples of the measured steps
   (:func:`mtlkit.analysis.grouping.grouping_robustness`); with three tasks or more.
2. **Is one multi-task model better than one model per task?** and 3. **how to weight the
   losses?** A comparison (:func:`mtlkit.experiments.compare.run_compare`) of a small fixed
   menu, :data:`MENU`: the single-task models (STL), equal weights (EW), one loss-based method
   (UW) and one gradient method (UPGrad), over seeds, each model selected on validation, with
   Δm and its confidence interval paired by seed, a decision per method and per task, the
   runs that had not converged, and the efficiency of each choice (parameters, training time,
   latency).

Then :func:`recommend` turns that summary into a recommendation: which model(s) (one MTL
model, groups, or the single-task models), which method, and what it costs. The page is
printed on the terminal and written as ``advise.html`` (with ``advise.json``) in the run
folder.

**Budget.** :func:`measure_cost` (the *pilot*) runs one real epoch of the multi-task model
and times a few training steps of every model of the menu, a validation pass and two affinity
measurements; with ``budget_minutes``, :func:`plan_budget` (a pure function, documented
there and in ``docs/advise.md``) chooses the seeds, the maximum epochs and the affinity steps
that fit, and lists what it had to cut.

**Resumable.** The plan is saved in ``plan.json``; a second call with the same ``--out``
reuses it, the measured affinity and every finished run of the comparison (the run folders of
:func:`~mtlkit.experiments.compare.train_or_reuse`), so an interrupted advise continues with
the first unfinished run (trained again from its start) and a finished one only re-renders
the page.
"""

from __future__ import annotations

import html
import json
import math
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mtlkit.config import RunConfig
from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.experiments.compare.runs import DEFAULT_PATIENCE
from mtlkit.files import atomic_write_text

__all__ = [
    "MENU",
    "Cost",
    "Plan",
    "measure_cost",
    "plan_budget",
    "print_advice",
    "recommend",
    "render_html",
    "run_advise",
]

#: the methods compared with the single-task models: the equal-weight baseline, one
#: loss-based method and one gradient method (why these: ``docs/advise.md``)
MENU: tuple[str, ...] = ("ew", "uw", "upgrad")

#: what each method of the menu stands for, shown on the page
MENU_ROLES: dict[str, str] = {
    "ew": "equal weights: the baseline every balancing method must beat",
    "uw": "loss-based: uncertainty weighting (Kendall et al. 2018), no option to tune, "
    "one backward pass",
    "upgrad": "gradient-based: UPGrad (Quinton & Rey 2024), no conflicting update, "
    "no option to tune",
}

#: share of the budget the plan may fill (the rest absorbs estimation error and evaluation)
SAFETY = 0.85
#: share of the usable budget that affinity may take
AFFINITY_SHARE = 0.15
#: measured affinity steps wanted (at most; the measurement stops earlier once precise), the
#: fewest worth a standard error, and the training steps between two measurements
AFFINITY_STEPS = 100
AFFINITY_MIN_STEPS = 10
AFFINITY_EVERY = 10
#: the fewest measured affinity steps before the precision rule may stop the measurement
AFFINITY_MIN_MEASURED = 30
#: seeds wanted: 3 is the fewest whose 95 % t interval is not dominated by t(0.975, n − 1)
TARGET_SEEDS = 3

DECISIONS = ("better", "worse", "no detectable difference", "undecided")


# ---------------------------------------------------------------------------- cost and plan


@dataclass(frozen=True)
class Cost:
    """Measured seconds of one config's models (the pilot of :func:`measure_cost`).

    ``stl_step``: one training step of a single-task model; ``method_step[m]``: one step of
    the multi-task model with method ``m``; ``epoch_overhead``: what an epoch costs besides
    its training steps (validation, checkpoint, logging); ``run_seconds``: what a run costs
    besides its epochs (loading the data, building the model); ``affinity_measure``: one
    affinity measurement (a batched backward and T + 1 forward passes), besides its step.
    """

    n_tasks: int
    steps_per_epoch: int
    stl_step: float
    method_step: dict[str, float]
    epoch_overhead: float
    run_seconds: float
    affinity_measure: float
    pilot_seconds: float = 0.0

    def epoch_seconds(self, model: str) -> float:
        """One epoch (training + overhead) of ``model`` (``"stl"`` or a menu method)."""
        step = self.stl_step if model == "stl" else self.method_step[model]
        return step * self.steps_per_epoch + self.epoch_overhead

    def seed_epoch_seconds(self, menu: Sequence[str]) -> float:
        """One epoch of every model of one seed: the T single-task models and each method."""
        return self.n_tasks * self.epoch_seconds("stl") + sum(self.epoch_seconds(m) for m in menu)

    def affinity_seconds(self, every: int = AFFINITY_EVERY) -> float:
        """One measured affinity step and the ``every`` training steps it comes with."""
        return self.affinity_measure + every * self.method_step.get("ew", self.stl_step)

    def seed_run_seconds(self, menu: Sequence[str]) -> float:
        """The fixed cost of every run of one seed (T single-task models and each method)."""
        return (self.n_tasks + len(menu)) * self.run_seconds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cost:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Plan:
    """Seeds, maximum epochs (with early stopping after ``patience`` epochs without
    improvement) and affinity steps of one advise; ``cuts`` say what the budget took away."""

    seeds: int
    epochs: int
    patience: int
    affinity_steps: int
    estimated_seconds: float
    full_seconds: float
    budget_seconds: float | None = None
    cuts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def plan_budget(
    cost: Cost,
    max_epochs: int,
    budget_seconds: float | None = None,
    *,
    menu: Sequence[str] = MENU,
    seeds: int = TARGET_SEEDS,
    patience: int = DEFAULT_PATIENCE,
) -> Plan:
    """The seeds, maximum epochs and affinity steps that fit ``budget_seconds``.

    The rule (also in ``docs/advise.md``), with U the seconds of one epoch of every model of
    one seed (T single-task models + each method of ``menu``, overhead included) and F the
    fixed cost of those T + |menu| runs (data, model):

    1. usable = ``SAFETY`` × budget − the pilot's seconds already spent;
    2. affinity: at most ``AFFINITY_STEPS`` measured steps (one every ``AFFINITY_EVERY``
       training steps), cut to what fits in ``AFFINITY_SHARE`` of the usable seconds (after
       the fixed cost of its run), never below ``AFFINITY_MIN_STEPS``;
    3. comparison, with what remains (R): the most seeds s ≤ ``seeds`` (down to 2) whose runs
       fit at least half of ``max_epochs``, s · (⌈max_epochs / 2⌉ · U + F) ≤ R; then the most
       epochs E ≤ ``max_epochs`` with s · (E · U + F) ≤ R. Seeds go before epochs below half
       the maximum because fewer epochs leave runs unconverged (flagged), while fewer than
       two seeds leave no interval at all. When even two seeds do not fit: one seed (the
       verdict is then "undecided"), as many epochs as fit, at least one;
    4. patience: ``patience`` (the comparison protocol's: the config's, else
       :data:`~mtlkit.experiments.compare.runs.DEFAULT_PATIENCE`).

    Without a budget: ``seeds`` seeds, ``max_epochs`` epochs, ``AFFINITY_STEPS`` steps.
    ``estimated_seconds`` is the plan's cost (pilot included), an upper bound when runs stop
    early; ``full_seconds`` that of the uncut plan, so a user knows what budget is enough.
    """
    if max_epochs < 1:
        raise ConfigError(f"advise: the maximum epochs must be ≥ 1, got {max_epochs}")
    if seeds < 1:
        raise ConfigError(f"advise: option 'seeds' must be ≥ 1, got {seeds}")
    unit = cost.seed_epoch_seconds(menu)
    fixed = cost.seed_run_seconds(menu)

    def cost_of(n_seeds: int, epochs: int, steps: int) -> float:
        affinity = cost.run_seconds + steps * cost.affinity_seconds()
        return cost.pilot_seconds + affinity + n_seeds * (epochs * unit + fixed)

    full = cost_of(seeds, max_epochs, AFFINITY_STEPS)
    cuts: list[str] = []
    if budget_seconds is None:
        s, epochs, steps = seeds, max_epochs, AFFINITY_STEPS
    else:
        if budget_seconds <= 0:
            raise ConfigError(f"advise: option 'budget' must be > 0 minutes, got {budget_seconds}")
        usable = SAFETY * budget_seconds - cost.pilot_seconds
        share = AFFINITY_SHARE * usable - cost.run_seconds
        step = cost.affinity_seconds()
        fits = math.floor(max(share, 0.0) / step) if step > 0 else AFFINITY_STEPS
        steps = max(AFFINITY_MIN_STEPS, min(AFFINITY_STEPS, fits))
        if steps < AFFINITY_STEPS:
            cuts.append(f"affinity measured on {steps} of {AFFINITY_STEPS} steps")
        remaining = usable - cost.run_seconds - steps * step
        half = math.ceil(max_epochs / 2)
        s = next((n for n in range(seeds, 1, -1) if n * (half * unit + fixed) <= remaining), 1)
        room = (remaining / s - fixed) / unit if unit > 0 else max_epochs
        epochs = max(1, min(max_epochs, math.floor(room)))
        if s < seeds:
            cuts.append(
                f"{s} seed(s) instead of {seeds}"
                + (": one seed cannot decide (no interval)" if s == 1 else "")
            )
        if epochs < max_epochs:
            cuts.append(f"at most {epochs} of the config's {max_epochs} epochs")
    estimated = cost_of(s, epochs, steps)
    if budget_seconds is not None and estimated > SAFETY * budget_seconds:
        cuts.append(
            f"even this smallest plan needs about {estimated / 60:.1f} min, more than the "
            f"budget of {budget_seconds / 60:.1f} min"
        )
    return Plan(
        seeds=s,
        epochs=epochs,
        patience=patience,
        affinity_steps=steps,
        estimated_seconds=estimated,
        full_seconds=full,
        budget_seconds=budget_seconds,
        cuts=cuts,
    )


def _timed_steps(trainer: Any, loader: Any, steps: int) -> float:
    """Median seconds of ``steps`` training steps after one warm-up step (the loader is
    read again from the start when it runs out); the median, since one stalled step on a
    shared machine would dominate a mean of three."""
    times: list[float] = []
    warm = False
    while len(times) < steps:
        batches = 0
        for batch in loader:
            batches += 1
            started = time.perf_counter()
            trainer.train_step(batch)
            if warm:  # the first step pays for allocations and lazy initialisation
                times.append(time.perf_counter() - started)
            warm = True
            if len(times) == steps:
                break
        if batches == 0:
            raise ConfigError("advise: the training split yields no batch")
    return statistics.median(times)


def measure_cost(
    config: RunConfig, menu: Sequence[str] = MENU, steps: int = 3, folder: Path | None = None
) -> Cost:
    """The pilot: the seconds of one run's data and model (a build), of one real epoch (a
    one-epoch run of the multi-task model with equal weights, written to ``folder`` or a
    temporary folder), of ``steps`` training steps of a single-task model and of the
    multi-task model with each method of ``menu``, and of two affinity measurements.

    The epoch overhead is what the one-epoch run's fit took besides its training steps
    (validation, checkpoint, logging; at least one timed validation pass). It also holds the
    fit's one-time costs, so it is an upper bound: the estimate errs long, not short. The
    fixed cost of a run is what the one-epoch run took besides its fit (building the data and
    model, the final evaluation), and at least one build of the single-task model (after the
    first build, so with the caches a comparison's runs find). The multi-task step models
    share the data loaded once."""
    from mtlkit.analysis.affinity import measure_affinity
    from mtlkit.experiments.compare import Variant, stl_config, variant_config
    from mtlkit.experiments.run import (
        Run,
        build_run,
        build_run_model,
        build_weighting,
        encoder_spec,
        resolve_tasks,
        train_run,
    )
    from mtlkit.train.batches import resolve_device

    started = time.perf_counter()
    base = build_run(config)
    main = [t for t in base.tasks if not t.auxiliary]
    if not main:
        raise ConfigError("advise: every task is auxiliary; there is nothing to advise on")

    def run_of(cfg: RunConfig) -> Any:
        torch.manual_seed(cfg.seed)
        tasks = resolve_tasks(cfg, base.data)
        data = (
            base.data
            if len(tasks) == len(base.tasks)
            else base.data.select_tasks([t.name for t in tasks])
        )
        model = build_run_model(cfg, encoder_spec(cfg, data.encoder), tasks)
        return Run(cfg, data, tasks, model, build_weighting(cfg, tasks))

    steps_per_epoch = len(base.loader("train", train=True))
    method_step: dict[str, float] = {}
    for method in menu:
        run = run_of(variant_config(config, Variant(method, config.model.architecture), 0))
        trainer = run.trainer(progress=False)
        method_step[method] = _timed_steps(trainer, run.loader("train", train=True), steps)
    began = time.perf_counter()
    trainer.evaluate(run.loader("val"))
    eval_seconds = time.perf_counter() - began
    began = time.perf_counter()  # a run's build as the comparison's runs see it (warm caches)
    stl = build_run(stl_config(config, main[0], config.seed))
    run_seconds = time.perf_counter() - began
    stl_step = _timed_steps(stl.trainer(progress=False), stl.loader("train", train=True), steps)
    measured = measure_affinity(
        base.model,
        base.tasks,
        base.weighting,
        base.loader("train", train=True),
        optimizer=base.trainer(progress=False).optimizer,
        steps=2,
        every=1,
        min_measured=2,
        max_measured=2,
        device=resolve_device(config.train.device),
    )
    affinity_measure = measured.seconds["measure"] / measured.steps
    ew = variant_config(config, Variant("ew", config.model.architecture), config.seed)
    one = ew.model_copy(
        update={
            "name": f"{config.name}-pilot",
            "train": ew.train.model_copy(update={"epochs": 1}),
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        result = train_run(
            one, Path(folder or scratch) / "pilot-epoch", progress=False, if_exists="replace"
        )
        epoch_run = time.perf_counter() - began
    fit = float(result["train_seconds"])  # the fit: the epoch, its validation, its checkpoint
    ew_step = method_step.get("ew", min(method_step.values()))
    return Cost(
        n_tasks=len(main),
        steps_per_epoch=steps_per_epoch,
        stl_step=stl_step,
        method_step=method_step,
        epoch_overhead=max(eval_seconds, fit - steps_per_epoch * ew_step),
        run_seconds=max(run_seconds, epoch_run - fit),
        affinity_measure=affinity_measure,
        pilot_seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------- recommendation


def _label_method(label: str) -> str:
    return label.split("@", 1)[0]


def _ci_text(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return "n/a"
    ci = stat.get("ci")
    mean = stat.get("mean")
    if mean is None:
        return "n/a"
    if not ci:
        return f"{mean:+.2f} % (interval n/a: one seed)"
    return f"{mean:+.2f} % (95 % CI {ci[0]:+.2f} … {ci[1]:+.2f})"


def _short_ci(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci")
    interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "[n/a]"
    return f"{stat['mean']:+.2f} {interval}"


def _not_converged(summary: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for run in summary.get("not_converged", []) or []:
        if run not in found:
            found.append(str(run))
    for res in summary.get("variants", {}).values():
        for run in res.get("not_converged", []) or []:
            if run not in found:
                found.append(str(run))
    return found


def _cost_of(summary: Mapping[str, Any], key: str) -> dict[str, Any]:
    eff = summary.get("efficiency", {}) or {}
    return dict(eff.get(key, {}) or {})


def _ratio_text(mine: Mapping[str, Any], stl: Mapping[str, Any]) -> str:
    parts = []
    for key, what in (
        ("params", "parameters"),
        ("train_seconds", "training time"),
        ("latency_ms", "latency"),
    ):
        a, b = mine.get(key), stl.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
            parts.append(f"{100 * a / b:.0f} % of the {what}")
    return ", ".join(parts)


def recommend(
    summary: Mapping[str, Any], grouping: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What to train, from a comparison summary (the contract of
    :func:`mtlkit.experiments.compare.summarise`) and, optionally, the affinity grouping.

    ``grouping``: ``{"groups": [[task, ...], ...], "frequency": share of bootstrap resamples
    that give it, or None, "agrees": whether the cosine measure gives the same grouping}``.

    Returns ``{"choice", "method", "models", "confidence", "headline", "reasons", "caveats",
    "cost"}`` where ``choice`` is ``"mtl"`` (one multi-task model with ``method``), ``"stl"``
    (one model per task) or ``"undecided"`` (one seed), and ``confidence`` is ``"decided"``
    (the interval excludes 0), ``"provisional"`` (decided, but on runs that had not
    converged), ``"cost only"`` (no detectable difference: decided on cost) or ``"none"``.
    The rules:

    - some method is **better** (its whole interval of Δm above 0): the one with the highest
      lower bound (ties: the cheaper to train);
    - every method **worse**: the single-task models;
    - otherwise, with **no detectable difference** for some method: the cheapest of those in
      parameters (one MTL model against T single-task models), with its cost; a better
      verdict needs a larger budget;
    - only **undecided** (one seed): no recommendation; the provisional best by mean Δm;
    - with one multi-task model chosen, the tasks on which its method is decided worse than
      alone are named;
    - runs whose best epoch was their last are caveats (raise the budget), and make a
      "decided" choice "provisional" when a deciding verdict uses them (the chosen method's,
      or the worse methods' when the choice is the single-task models; a verdict uses its
      own runs and the single-task baselines);
    - a grouping into two or more models that is robust (≥ 80 % of resamples) and differs
      from the all-in-one model is suggested for verification (it is not trained here).
    """
    variants: Mapping[str, Any] = summary.get("variants", {})
    if not variants:
        raise ConfigError("advise: the comparison summary has no multi-task variant")
    tasks = list(summary.get("stl", {}))
    by_decision: dict[str, list[str]] = {d: [] for d in DECISIONS}
    for label, res in variants.items():
        decision = res.get("decision", "undecided")
        by_decision[decision if decision in by_decision else "undecided"].append(label)
    stl_cost = _cost_of(summary, "stl")
    reasons: list[str] = []
    caveats: list[str] = []
    method: str | None = None
    models: list[list[str]]

    def lower(label: str) -> float:
        ci = variants[label].get("delta_m", {}).get("ci")
        return float(ci[0]) if ci else -math.inf

    def train_cost(label: str) -> float:
        value = _cost_of(summary, label).get("train_seconds")
        return float(value) if isinstance(value, int | float) else math.inf

    def params(label: str) -> float:
        value = _cost_of(summary, label).get("params")
        return float(value) if isinstance(value, int | float) else math.inf

    if by_decision["better"]:
        best = max(by_decision["better"], key=lambda v: (lower(v), -train_cost(v)))
        choice, confidence, method, models = "mtl", "decided", best, [tasks]
        headline = (
            f"Train one multi-task model with {_label_method(best)}: better than one model "
            f"per task, Δm {_ci_text(variants[best].get('delta_m'))}."
        )
        others = [v for v in by_decision["better"] if v != best]
        if others:
            reasons.append(
                f"also better than STL: {', '.join(others)}; {best} has the highest lower bound"
            )
    elif by_decision["worse"] and not by_decision["no detectable difference"]:
        choice, confidence = "stl", "decided"
        some = " that could be decided" if by_decision["undecided"] else ""
        headline = (
            f"Train one model per task: every method{some} is worse than the single-task models."
        )
        models = [[t] for t in tasks]
        for label in by_decision["worse"]:
            reasons.append(f"{label}: Δm {_ci_text(variants[label].get('delta_m'))}")
    elif by_decision["no detectable difference"]:
        tied = by_decision["no detectable difference"]
        cheapest = min(tied, key=lambda v: (params(v), train_cost(v)))
        mtl_params, stl_params = params(cheapest), stl_cost.get("params")
        if isinstance(stl_params, int | float) and mtl_params >= stl_params:
            choice, method, models = "stl", None, [[t] for t in tasks]
            headline = (
                "Train one model per task: no method is detectably better, and one "
                "multi-task model is not cheaper here."
            )
        else:
            choice, method, models = "mtl", cheapest, [tasks]
            cheaper = _ratio_text(_cost_of(summary, cheapest), stl_cost)
            headline = (
                f"No detectable difference at this budget: one multi-task model with "
                f"{_label_method(cheapest)} is as good within the interval"
                + (f" and needs {cheaper} of the single-task models." if cheaper else ".")
            )
        confidence = "cost only"
        for label in tied:
            reasons.append(f"{label}: Δm {_ci_text(variants[label].get('delta_m'))}")
        for label in by_decision["worse"]:
            reasons.append(f"{label} is worse: Δm {_ci_text(variants[label].get('delta_m'))}")
        reasons.append("a larger budget (more seeds, epochs) narrows the intervals")
    else:
        choice, confidence, models = "undecided", "none", [tasks]

        def mean(label: str) -> float:
            return float(variants[label].get("delta_m", {}).get("mean", -math.inf))

        best = max(variants, key=mean)
        method = None
        n = len(summary.get("seeds", []))
        why = "with one seed" if n < 2 else f"over {n} seeds (the summary has no decision)"
        headline = (
            f"Cannot decide {why}: raise the budget to get at least two seeds "
            f"(provisionally best: {best}, mean Δm {mean(best):+.2f} %)."
        )
    if choice == "mtl" and method is not None:
        worse_tasks = [
            t for t, d in (variants[method].get("task_decisions") or {}).items() if d == "worse"
        ]
        if worse_tasks:
            caveats.append(
                f"task(s) {', '.join(worse_tasks)} are worse in this model than alone: if they "
                "matter most, serve them with their own model(s)"
            )
    unconverged = _not_converged(summary)
    if unconverged:
        caveats.append(
            f"not converged: {_runs(len(unconverged))} selected their last epoch "
            f"({'; '.join(unconverged[:3])}{'; …' if len(unconverged) > 3 else ''}); "
            "raise the budget (epochs)"
        )
        deciding = [method] if method is not None else by_decision["worse"]
        if confidence == "decided" and any(variants[v].get("not_converged") for v in deciding):
            confidence = "provisional"
    if grouping and len(grouping.get("groups", [])) > 1 and len(tasks) > 2:
        freq = grouping.get("frequency")
        text = _groups_text(grouping)
        if isinstance(freq, int | float) and freq >= 0.8:
            reasons.append(
                f"affinity suggests two models ({text}), robust in {100 * freq:.0f} % of "
                "bootstrap resamples; not trained here: check it with "
                "`mtlkit group CONFIG -k 2 --verify`"
            )
        else:
            shown = "unknown" if freq is None else f"{100 * freq:.0f} %"
            reasons.append(
                f"affinity grouping ({text}) is not robust ({shown} of resamples): "
                "no grouping is supported by the measured affinity"
            )
        if grouping.get("agrees") is False:
            caveats.append(
                "the cosine and lookahead measures give different groupings"
                + (f": {grouping['measure_advice']}" if grouping.get("measure_advice") else "")
            )
    if choice == "mtl" and method is not None:
        cost = {"model": method, **_cost_of(summary, method)}
    else:
        cost = {"model": "stl", **stl_cost}
    return {
        "choice": choice,
        "method": None if method is None else _label_method(method),
        "variant": method,
        "models": models,
        "confidence": confidence,
        "headline": headline,
        "reasons": reasons,
        "caveats": caveats,
        "cost": cost,
    }


# ---------------------------------------------------------------------------- the run


def _same_config(saved: Mapping[str, Any], config: RunConfig) -> bool:
    return dict(saved) == config.model_dump(mode="json")


def _load_or_plan(
    config: RunConfig,
    out: Path,
    budget_minutes: float | None,
    seeds: int | None,
    console: Console,
) -> tuple[Plan, Cost, bool]:
    """The saved plan of ``out`` (resume), or a new one from a pilot."""
    plan_file = out / "plan.json"
    if plan_file.is_file():
        saved = json.loads(plan_file.read_text(encoding="utf-8"))
        if not _same_config(saved.get("config", {}), config):
            raise ConfigError(
                f"advise: {out} holds the advice of a different config; use a fresh --out"
            )
        asked = {"budget_minutes": budget_minutes, "seeds": seeds}
        if saved.get("asked") != asked:
            raise ConfigError(
                f"advise: {out} was planned with {saved.get('asked')}, not {asked}; "
                "use a fresh --out, or the same options to resume"
            )
        console.print(f"advise: resuming the plan in {plan_file}")
        return Plan.from_json(saved["plan"]), Cost.from_json(saved["cost"]), True
    console.print("advise: timing a few steps of every model (pilot)")
    cost = measure_cost(config, folder=out)
    plan = plan_budget(
        cost,
        config.train.epochs,
        None if budget_minutes is None else 60.0 * budget_minutes,
        seeds=seeds or TARGET_SEEDS,
        patience=config.train.patience or DEFAULT_PATIENCE,
    )
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "config": config.model_dump(mode="json"),
        "asked": {"budget_minutes": budget_minutes, "seeds": seeds},
        "plan": plan.to_json(),
        "cost": cost.to_json(),
    }
    atomic_write_text(plan_file, json.dumps(record, indent=2))
    return plan, cost, False


def _affinity_section(
    config: RunConfig, out: Path, plan: Plan, cost: Cost, console: Console
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The measured affinity (reused when done) and the grouping into two models."""
    from mtlkit.analysis.affinity import Affinity
    from mtlkit.experiments.affinity import run_affinity
    from mtlkit.experiments.compare import Variant, variant_config
    from mtlkit.experiments.run import build_run

    names = [t.name for t in build_run(config).tasks if not t.auxiliary]
    if len(names) < 2:
        return None, None
    folder = out / "affinity"
    file = folder / "affinity.json"
    if file.is_file():  # this folder's plan measured it already
        affinity = Affinity.load(file)
    else:
        steps = plan.affinity_steps
        console.print(f"advise: measuring the task affinity (at most {steps} measured steps)")
        ew = variant_config(config, Variant("ew", config.model.architecture), config.seed)
        affinity = run_affinity(
            ew,
            folder,
            steps=steps * AFFINITY_EVERY,
            every=AFFINITY_EVERY,
            min_measured=min(AFFINITY_MIN_MEASURED, steps),
            max_measured=steps,
        )
    data = affinity.to_json()  # with each measure's standard errors ("stderr")
    if len(names) < 3:
        return data, None
    return data, _grouping(config, out, names, console)


def _grouping(config: RunConfig, out: Path, names: list[str], console: Console) -> dict[str, Any]:
    """The best grouping into two models by the lookahead, its bootstrap robustness and
    whether the gradient cosine agrees (:func:`~mtlkit.experiments.group.run_group`)."""
    from mtlkit.experiments.group import run_group

    k = 2
    result = run_group(
        config, out / "group", k, out / "affinity" / "affinity.json", "tag", console=console
    )
    robustness = result.get("robustness") or {}
    other = result.get("other_measure") or {}
    return {
        "k": k,
        "measure": result.get("measure", "tag"),
        "groups": result["grouping"]["groups"],
        "serves": result["grouping"].get("serves"),
        "scores": result["grouping"].get("scores"),
        "frequency": robustness.get("frequency"),
        "pair_together": robustness.get("pair_together"),
        "robustness_note": result.get("robustness_note"),
        "measure_advice": result.get("measure_advice"),
        "agrees": other.get("agrees"),
        "cosine_groups": (other.get("grouping") or {}).get("groups", []),
    }


def run_advise(
    config: RunConfig,
    out_dir: str | Path,
    *,
    budget_minutes: float | None = None,
    seeds: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Affinity and grouping, the comparison of :data:`MENU` against STL, the verdict and a
    recommendation for ``config``, within ``budget_minutes`` when given; writes
    ``advise.json`` and ``advise.html`` into ``out_dir`` and returns the advice."""
    from mtlkit.experiments.compare import run_compare

    console = console or Console()
    if budget_minutes is not None and not budget_minutes > 0:
        raise ConfigError(f"advise: option 'budget' must be > 0 minutes, got {budget_minutes}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"advise: option 'seeds' must be ≥ 1, got {seeds}")
    out = Path(out_dir)
    started, cpu = time.perf_counter(), time.process_time()
    plan, cost, resumed = _load_or_plan(config, out, budget_minutes, seeds, console)
    seconds = {"pilot": 0.0 if resumed else cost.pilot_seconds}
    for cut in plan.cuts:
        console.print(f"[yellow]budget cut:[/] {cut}")
    began = time.perf_counter()
    affinity, grouping = _affinity_section(config, out, plan, cost, console)
    seconds["affinity"] = time.perf_counter() - began
    began = time.perf_counter()
    summary = run_compare(
        config,
        out / "compare",
        methods=list(MENU),
        seeds=plan.seeds,
        console=console,
        patience=plan.patience,
        max_epochs=plan.epochs,
    )
    seconds["compare"] = time.perf_counter() - began
    seconds["total"] = time.perf_counter() - started
    seconds["cpu"] = time.process_time() - cpu
    previous = out / "advise.json"
    before = (
        json.loads(previous.read_text(encoding="utf-8")).get("seconds", {}).get("all_calls", 0.0)
        if resumed and previous.is_file()
        else 0.0
    )
    seconds["all_calls"] = before + seconds["total"]
    advice = {
        "name": config.name,
        "menu": {m: MENU_ROLES[m] for m in MENU},
        "plan": plan.to_json(),
        "cost": cost.to_json(),
        "resumed": resumed,
        "seconds": seconds,
        "affinity": affinity,
        "grouping": grouping,
        "summary": summary,
        "recommendation": recommend(summary, grouping),
    }
    atomic_write_text(out / "advise.json", json.dumps(advice, indent=2))
    atomic_write_text(out / "advise.html", render_html(advice))
    return advice


# ---------------------------------------------------------------------------- the page


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return f"{value:{spec}}{unit}" if isinstance(value, int | float) else "n/a"


def verdict_rows(advice: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per model (STL first): Δm with its interval, the decision, per-task decisions,
    convergence and efficiency."""
    summary = advice["summary"]
    eff = summary.get("efficiency", {}) or {}

    def cost(key: str) -> dict[str, str]:
        e = eff.get(key, {}) or {}
        return {
            "params": _fmt(e.get("params"), ",.0f"),
            "train s": _fmt(e.get("train_seconds"), ".1f"),
            "latency ms": _fmt(e.get("latency_ms"), ".2f"),
            "examples/s": _fmt(e.get("throughput"), ",.0f"),
            "peak MB": _fmt(e.get("peak_memory_mb"), ".0f"),
        }

    n_tasks = len(summary.get("stl", {}))
    rows = [
        {
            "model": f"STL ({n_tasks} models)",
            "Δm %": "0 (reference)",
            "Δm short": "0",
            "decision": "",
            "per task": "",
            "converged": "",
            **cost("stl"),
        }
    ]
    for label, res in summary.get("variants", {}).items():
        tasks = res.get("task_decisions") or {}
        unconverged = res.get("not_converged") or []
        rows.append(
            {
                "model": label,
                "Δm %": _ci_text(res.get("delta_m")),
                "Δm short": _short_ci(res.get("delta_m")),
                "decision": res.get("decision", "n/a"),
                "per task": ", ".join(f"{t}: {d}" for t, d in tasks.items()) or "n/a",
                "converged": "yes" if not unconverged else f"no ({_runs(len(unconverged))})",
                **cost(label),
            }
        )
    return rows


def _took(seconds: Mapping[str, Any]) -> str:
    """How long advise took: this call, and all calls on the folder when it resumed."""
    total, every = seconds.get("total", 0.0), seconds.get("all_calls")
    text = f"Took {total / 60:.1f} min"
    if isinstance(every, int | float) and every > total + 1:
        text += f" (all calls on this folder: {every / 60:.1f} min; finished work was reused)"
    return text


def _groups_text(grouping: Mapping[str, Any]) -> str:
    """``a, b | c``; a group that serves fewer tasks than it trains on says which."""
    serves = grouping.get("serves") or grouping["groups"]
    parts = []
    for group, served in zip(grouping["groups"], serves, strict=True):
        text = ", ".join(group)
        if sorted(served) != sorted(group):
            text += f" (serving {', '.join(served)})"
        parts.append(text)
    return " | ".join(parts)


def print_advice(advice: Mapping[str, Any], console: Console) -> None:
    """The page on the terminal: plan, affinity and grouping, verdicts, recommendation."""
    plan, rec = advice["plan"], advice["recommendation"]
    budget = plan.get("budget_seconds")
    console.rule(f"[bold]mtlkit advise: {advice['name']}")
    console.print(
        f"Plan: {plan['seeds']} seed(s), at most {plan['epochs']} epochs (patience "
        f"{plan['patience']}), {plan['affinity_steps']} affinity steps; estimated "
        f"{plan['estimated_seconds'] / 60:.1f} min"
        + (f" of a {budget / 60:.1f} min budget" if budget else "")
        + f" (uncut: {plan['full_seconds'] / 60:.1f} min). {_took(advice['seconds'])}."
    )
    for cut in plan.get("cuts", []):
        console.print(f"  [yellow]cut:[/] {cut}")
    affinity = advice.get("affinity")
    if affinity:
        table = Table(
            title=f"Lookahead affinity Z(i→j), % change of j's loss after a step on i "
            f"(± standard error; {affinity['steps']} measured steps)"
        )
        table.add_column("i → j")
        for t in affinity["tasks"]:
            table.add_column(t, justify="right")
        stderr = (affinity.get("stderr") or {}).get("tag")
        for i, (t, row) in enumerate(zip(affinity["tasks"], affinity["tag"], strict=True)):
            cells = []
            for j, v in enumerate(row):
                if i == j:
                    cells.append("—")
                elif stderr and stderr[i][j] is not None:
                    cells.append(f"{v:+.3g} ± {stderr[i][j]:.2g}")
                else:
                    cells.append(f"{v:+.3g}")
            table.add_row(t, *cells)
        console.print(table)
    grouping = advice.get("grouping")
    if grouping:
        freq = grouping.get("frequency")
        console.print(
            "Best grouping into 2 models (lookahead): "
            + _groups_text(grouping)
            + (
                f"; robust in {100 * freq:.0f} % of bootstrap resamples"
                if freq is not None
                else "; robustness unknown"
            )
            + ("; the cosine measure disagrees" if grouping.get("agrees") is False else "")
        )
        if grouping.get("robustness_note"):
            console.print(f"  robustness: {grouping['robustness_note']}")
    summary = advice["summary"]
    interval = summary.get("interval", "t")
    table = Table(
        title=f"Verdict against the {len(summary.get('stl', {}))} single-task models "
        f"(test metrics; Δm paired by seed, 95 % {interval} interval)"
    )
    short = ("model", "Δm %", "decision", "converged", "params", "train s", "latency ms")
    for column in short:
        table.add_column(column, justify="left" if column in ("model", "decision") else "right")
    for r in verdict_rows(advice):
        table.add_row(*(r[c] if c != "Δm %" else r["Δm short"] for c in short))
    console.print(table)
    for label, res in summary.get("variants", {}).items():
        decided = res.get("task_decisions") or {}
        per_task = res.get("delta_m_per_task") or {}
        if decided:
            console.print(
                f"  {label} per task: "
                + "; ".join(f"{t} {_short_ci(per_task.get(t))} {d}" for t, d in decided.items())
            )
    console.print(f"[bold]Recommendation[/] ({rec['confidence']}): {rec['headline']}")
    for reason in rec["reasons"]:
        console.print(f"  - {reason}")
    for caveat in rec["caveats"]:
        console.print(f"  [yellow]![/] {caveat}")
    for row in _cost_rows(advice):
        console.print(
            f"  cost, {row['']}: {row['model']}: {row['models']} model(s), {row['parameters']} "
            f"parameters, {row['training s (per seed)']} s training per seed, "
            f"{row['latency ms (one batch)']} ms per batch"
        )


def _cost_rows(advice: Mapping[str, Any]) -> list[dict[str, str]]:
    """What the recommended model(s) cost, beside the single-task models."""
    eff = advice["summary"].get("efficiency", {}) or {}
    chosen = advice["recommendation"].get("variant")
    rows = []
    for key in [k for k in (chosen, "stl") if k]:
        e = eff.get(key, {}) or {}
        rows.append(
            {
                "": "recommended" if key == chosen or not chosen else "single-task models",
                "model": "STL" if key == "stl" else key,
                "models": str(e.get("models", 1)),
                "parameters": _fmt(e.get("params"), ",.0f"),
                "training s (per seed)": _fmt(e.get("train_seconds"), ".1f"),
                "latency ms (one batch)": _fmt(e.get("latency_ms"), ".2f"),
                "examples/s": _fmt(e.get("throughput"), ",.0f"),
                "peak MB": _fmt(e.get("peak_memory_mb"), ".0f"),
            }
        )
    return rows


def _table_html(rows: Sequence[Mapping[str, str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(advice: Mapping[str, Any]) -> str:
    """One self-contained page: recommendation, plan, affinity and grouping, verdicts, the
    comparison's charts and table (the helpers of :mod:`mtlkit.experiments.report`)."""
    from mtlkit.experiments import report

    rec, plan = advice["recommendation"], advice["plan"]
    esc = html.escape
    parts = [
        '<section id="recommendation"><h2>Recommendation</h2>'
        f"<p><b>{esc(rec['headline'])}</b> (confidence: {esc(rec['confidence'])})</p>"
        + "".join(f"<p>{esc(r)}</p>" for r in rec["reasons"])
        + "".join(f'<p class="missing">! {esc(c)}</p>' for c in rec["caveats"])
        + _table_html(_cost_rows(advice))
        + "</section>"
    ]
    budget = plan.get("budget_seconds")
    menu = "".join(f"<li><b>{esc(m)}</b>: {esc(r)}</li>" for m, r in advice["menu"].items())
    parts.append(
        '<section id="plan"><h2>Plan and budget</h2>'
        f"<p>{plan['seeds']} seed(s), at most {plan['epochs']} epochs (early stopping after "
        f"{plan['patience']} without improvement), {plan['affinity_steps']} affinity steps; "
        f"estimated {plan['estimated_seconds'] / 60:.1f} min"
        + (f" of a {budget / 60:.1f} min budget" if budget else "")
        + f", uncut {plan['full_seconds'] / 60:.1f} min. {_took(advice['seconds'])}.</p>"
        + "".join(f'<p class="missing">cut: {esc(c)}</p>' for c in plan.get("cuts", []))
        + f"<p>Methods compared with the single-task models:</p><ul>{menu}</ul></section>"
    )
    affinity, grouping = advice.get("affinity"), advice.get("grouping")
    body = ""
    if affinity:
        try:
            body += report._affinity(affinity)
        except MissingExtraError as err:
            body += f'<p class="missing">{esc(str(err))}</p>'
    if grouping:
        freq = grouping.get("frequency")
        body += (
            "<p>Best grouping into 2 models (lookahead): "
            + esc(_groups_text(grouping))
            + (
                f"; robust in {100 * freq:.0f} % of bootstrap resamples"
                if freq is not None
                else "; robustness unknown"
            )
            + (
                ""
                if grouping.get("agrees") is not False
                else "; the cosine measure picks "
                + esc(" | ".join(", ".join(g) for g in grouping.get("cosine_groups", [])))
            )
            + ".</p>"
        )
    parts.append(
        '<section id="affinity"><h2>Which tasks together: affinity and grouping</h2>'
        + (body or '<p class="missing">Fewer than two tasks: no affinity.</p>')
        + "</section>"
    )
    parts.append(
        '<section id="verdict"><h2>Verdict and efficiency</h2>'
        + _table_html(
            [{k: v for k, v in r.items() if k != "Δm short"} for r in verdict_rows(advice)]
        )
        + "</section>"
    )
    try:
        comparison = report._comparison(advice["summary"])
    except MissingExtraError as err:
        comparison = f'<p class="missing">{esc(str(err))}</p>'
    parts.append(f'<section id="comparison"><h2>Comparison</h2>{comparison}</section>')
    name = esc(str(advice["name"]))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>mtlkit advise: {name}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{report._STYLE}</style></head><body>"
        f"<h1>mtlkit advise: {name}</h1>{''.join(parts)}"
        f"<script>{report._SCRIPT}</script></body></html>\n"
    )
