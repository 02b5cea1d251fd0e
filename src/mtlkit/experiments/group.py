"""Task grouping: which tasks to train together, chosen from their measured affinity.

:func:`run_group` chooses at most k groups of a config's tasks (:mod:`mtlkit.analysis`),
reports how robust that choice is (bootstrap over the measured steps), whether the other
measure (gradient cosine vs lookahead) picks the same grouping, and,
with ``verify``, trains the chosen grouping, the all-in-one model and the single-task models
(the runs of :mod:`mtlkit.experiments.compare`, reused when finished) to report Δm of each
choice against the single-task models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlkit.config import RunConfig, TaskConfig
from mtlkit.errors import ConfigError
from mtlkit.experiments.compare import main_metrics, stl_config, train_or_reuse
from mtlkit.experiments.run import build_run
from mtlkit.files import atomic_write_text
from mtlkit.tasks import Task, delta_m, delta_m_per_task

__all__ = ["measure_advice", "print_grouping", "run_group"]

#: a grouping chosen in at least this share of bootstrap resamples is trusted
ROBUST = 0.7


def run_group(
    config: RunConfig,
    out_dir: str | Path,
    models: int,
    affinity_file: str | Path | None = None,
    measure: str = "tag",
    verify: bool = False,
    console: Console | None = None,
    resamples: int = 200,
) -> dict[str, Any]:
    """Choose at most ``models`` groups of the config's tasks from their affinity (read from
    ``affinity_file`` or measured), write ``group.json``; with ``verify``, train the chosen
    grouping, the all-in-one model and the single-task models (seed ``config.seed``) and
    report each choice's per-task test metrics and Δm against the single-task models.

    With the grouping, each task's metrics come from the model that serves it; a group of one
    task is its single-task model.

    ``result["robustness"]`` (:func:`~mtlkit.analysis.grouping.grouping_robustness`, over
    ``resamples`` bootstrap resamples; None for an affinity file without per-step history) and
    ``result["other_measure"]``: the grouping the other measure picks, its robustness, and
    ``agrees``."""
    from mtlkit.analysis.affinity import Affinity, standard_error
    from mtlkit.analysis.grouping import best_grouping, grouping_robustness
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

    def choose(which: str) -> dict[str, Any]:
        matrix = affinity.matrix(which)[np.ix_(index, index)]
        grouping = best_grouping(matrix, models, names)
        try:
            samples = affinity.samples(which)[:, index][:, :, index]
        except ConfigError:
            samples = None  # an old affinity file without per-step history
        robust = None
        errors: dict[str, float | None] = {t: None for t in grouping.scores}
        if samples is not None and samples.shape[0] >= 2:
            robust = grouping_robustness(samples, models, names, resamples=resamples)
            for members, served in zip(grouping.groups, grouping.serves, strict=True):
                idx = [names.index(m) for m in members]
                for task in served:
                    j = names.index(task)
                    others = [i for i in idx if i != j]
                    if others:  # the score's standard error over the measured steps
                        per_step = samples[:, others, j].mean(axis=1)
                        errors[task] = float(standard_error(per_step))
                    else:
                        errors[task] = 0.0  # alone: the score is 0 by definition
        return {"grouping": grouping, "robustness": robust, "score_stderr": errors}

    chosen = choose(measure)
    other_name = "cosine" if measure == "tag" else "tag"
    other = choose(other_name)
    grouping = chosen["grouping"]
    result: dict[str, Any] = {
        "measure": measure,
        "grouping": grouping.to_json(),
        "score_stderr": chosen["score_stderr"],
        "robustness": None if chosen["robustness"] is None else chosen["robustness"].to_json(),
        "robustness_note": (
            chosen["robustness"].describe()
            if chosen["robustness"] is not None
            else "unknown: the affinity has no per-step history (an older file, or one "
            "measured step); measure again with `mtlkit affinity`"
        ),
        "steps": affinity.steps,
        "other_measure": {
            "measure": other_name,
            "grouping": other["grouping"].to_json(),
            "robustness": None if other["robustness"] is None else other["robustness"].to_json(),
            "agrees": other["grouping"].key() == grouping.key(),
        },
    }
    freq = {
        measure: None if chosen["robustness"] is None else chosen["robustness"].frequency,
        other_name: None if other["robustness"] is None else other["robustness"].frequency,
    }
    result["measure_advice"] = measure_advice(
        freq["tag"], freq["cosine"], result["other_measure"]["agrees"]
    )
    if verify:
        result["verify"] = _verify_grouping(config, tasks, grouping, out, console)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "group.json", json.dumps(result, indent=2))
    return result


def measure_advice(tag: float | None, cosine: float | None, agree: bool) -> str:
    """Which grouping to believe, from the bootstrap frequencies of the lookahead's (``tag``)
    and the cosine's groupings (None: unknown) and whether they agree (docs/affinity.md):
    the lookahead when it is robust; the cosine when only it is; otherwise neither decides,
    and ``--verify`` (training the candidates) should."""

    def robust(f: float | None) -> bool:
        return f is not None and f >= ROBUST

    if agree:
        if robust(tag) or robust(cosine):
            return "Both measures pick this grouping, and it is robust to the measurement noise."
        return (
            "Both measures pick this grouping, but neither is robust to the measurement "
            "noise: measure more steps or check it with --verify."
        )
    if robust(tag):
        return (
            "The measures disagree; believe the lookahead (TAG): it is robust, and it measures "
            "the effect on each task's loss, of which the cosine is one ingredient."
        )
    if robust(cosine):
        return (
            "The measures disagree and the lookahead's grouping is not robust (its scores are "
            "within the noise); lean on the gradient cosine's grouping, or check with --verify."
        )
    return (
        "The measures disagree and neither grouping is robust: the measurement cannot decide; "
        "train the candidates with --verify."
    )


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
        stl[task.name] = main_metrics([task], res["test"])[task.name]
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
    choices = {"all-in-one": main_metrics(main, all_in_one["test"])}
    grouped: dict[str, dict[str, float]] = {}
    for members, serves in zip(grouping.groups, grouping.serves, strict=True):
        served = [s for s in serves if s in stl]
        if not served:
            continue
        if len(members) == 1:
            grouped.update({s: stl[s] for s in served})
            continue
        res = group_run(members)
        grouped.update(main_metrics([by_name[s] for s in served], res["test"]))
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


def print_grouping(result: dict[str, Any], models: int, console: Console) -> None:
    """The grouping of :func:`~mtlkit.experiments.group.run_group`, its robustness and whether
    the other measure agrees."""
    from mtlkit.analysis.affinity import format_estimate

    grouping, measure = result["grouping"], result["measure"]
    label = {"tag": "lookahead (TAG)", "cosine": "gradient cosine"}
    table = Table(title=f"Best grouping into ≤ {models} model(s) by {label[measure]}")
    for column in ("model", "trained on", "serves", "scores"):
        table.add_column(column)
    for i, (g, s) in enumerate(zip(grouping["groups"], grouping["serves"], strict=True)):
        errors = result.get("score_stderr") or {}
        scores = ", ".join(
            f"{t}: {format_estimate(grouping['scores'][t], errors.get(t))}" for t in s
        )
        table.add_row(str(i + 1), ", ".join(g), ", ".join(s), scores)
    console.print(table)
    console.print(f"total score {grouping['total']:+.3g} ({grouping['search']} over this matrix)")
    console.print(f"Robustness: {result['robustness_note']}")
    robust = result.get("robustness")
    if robust:
        tasks = robust["tasks"]
        pairs = Table(
            title="Pair-together", caption="share of bootstrap resamples training i with j"
        )
        pairs.add_column("")
        for t in tasks:
            pairs.add_column(t, justify="right")
        for t, row in zip(tasks, robust["pair_together"], strict=True):
            pairs.add_row(t, *(f"{v:.2f}" for v in row))
        console.print(pairs)
    other = result["other_measure"]
    if other["agrees"]:
        console.print(f"The {label[other['measure']]} measure picks the same grouping.")
    else:
        groups = " | ".join(", ".join(g) for g in other["grouping"]["groups"])
        console.print(
            f"[bold]The {label[other['measure']]} measure picks a different grouping[/bold]: "
            f"{escape(groups)} (docs/affinity.md: which measure to believe)."
        )
    if "measure_advice" in result:
        console.print(f"[bold]Advice:[/bold] {result['measure_advice']}")
