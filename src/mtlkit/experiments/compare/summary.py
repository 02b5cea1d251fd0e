"""A comparison's summary and its tables: statistics over seeds, Δm, verdicts; CSV,
Markdown and the console table.

:func:`summarise` turns each model's test metrics per seed into mean ± std over seeds and Δm
against the single-task models of the same seed; :func:`rows` lays the summary out as one
row per (model, task, metric), which :func:`to_csv`, :func:`to_markdown`,
:func:`print_summary` and the HTML report (:mod:`mtlkit.experiments.report`) show.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from mtlkit.errors import ConfigError
from mtlkit.tasks import delta_m, delta_m_per_task, mean_std

__all__ = ["print_summary", "rows", "summarise", "to_csv", "to_markdown", "verdict"]


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
