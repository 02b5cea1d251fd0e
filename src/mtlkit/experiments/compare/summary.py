"""A comparison's summary and its tables: statistics over seeds, Δm with its confidence
interval, verdicts, efficiency; CSV, Markdown and the console table.

:func:`summarise` turns each model's test metrics per seed into mean and spread over seeds,
and Δm against the single-task models of the same seed (paired by seed). Δm compares one
primary metric per task by default (the all-metric Δm is kept beside it). Over ``n ≥ 2``
seeds the mean Δm gets a 95 % Student-t confidence interval (:func:`interval`), and the
decision follows it (:func:`decide`): "better" when the whole interval lies above 0, "worse"
when it lies below, else "no detectable difference" at this budget. One seed has no spread and
no interval: its decision is "undecided", never a "± 0". docs/protocol.md has the protocol.

:func:`rows` lays the summary out as one row per (model, task, metric) and
:func:`efficiency_rows` one row per model; :func:`to_csv`, :func:`to_markdown`,
:func:`print_summary` and the HTML report (:mod:`mtlkit.experiments.report`) show them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from mtlkit.errors import ConfigError
from mtlkit.tasks import decide, delta_m, delta_m_per_task, interval
from mtlkit.tasks.delta import CONFIDENCE

__all__ = [
    "CONFIDENCE",
    "DECISIONS",
    "INTERVAL",
    "decide",
    "delta_rows",
    "efficiency_rows",
    "interval",
    "print_summary",
    "rows",
    "summarise",
    "to_csv",
    "to_markdown",
    "verdict",
]

#: how the interval is computed (``summary["interval"]``)
INTERVAL = "t"
#: decision → the words a verdict uses for it
DECISIONS = {
    "better": "better than STL",
    "worse": "worse than STL",
    "no detectable difference": "no detectable difference at this budget",
    "undecided": "undecided: one seed cannot decide",
}

Table = dict[int, dict[str, dict[str, float]]]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    r = interval(values)
    return {"mean": r["mean"], "std": r["std"], "n": r["n"]}


def summarise(
    stl: Table,
    variants: Mapping[str, Table],
    *,
    primary: Mapping[str, str] | None = None,
    convergence: Sequence[Mapping[str, Any]] = (),
    efficiency: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Statistics over seeds of each metric, Δm against STL paired by seed, decisions.

    ``stl[seed][task][metric]`` are the baselines' test metrics; ``variants[label][seed]``
    the same for each multi-task variant. Δm is computed per seed against that seed's
    baselines (paired), then summarised by :func:`interval`. ``primary[task]`` is the metric
    Δm compares per task (default: the first metric of each task). ``convergence`` lists each
    run as ``{"model": "stl" | label, "task": str | None, "seed", "best_epoch", "epochs_run",
    "max_epochs"}``; a run whose best epoch is its last is named in ``not_converged`` of every
    verdict it enters. ``efficiency`` is copied into the summary (see ``runs.efficiency``).
    """
    seeds = sorted(stl)
    if not seeds:
        raise ConfigError("compare: no seed has single-task results")
    tasks = list(stl[seeds[0]])
    primary = dict(primary) if primary is not None else {}
    for task in tasks:
        primary.setdefault(task, next(iter(stl[seeds[0]][task])))
        if primary[task] not in stl[seeds[0]][task]:
            raise ConfigError(
                f"compare: task '{task}': primary metric '{primary[task]}' is not among its "
                f"metrics ({', '.join(stl[seeds[0]][task])})"
            )
    flagged = [dict(r) | {"text": _run_text(r)} for r in convergence if _not_converged(r)]
    stl_flags = [r["text"] for r in flagged if r["model"] == "stl"]
    out: dict[str, Any] = {
        "seeds": seeds,
        "primary": primary,
        "interval": INTERVAL,
        "confidence": CONFIDENCE,
        "stl": _metric_stats(stl, seeds, tasks),
        "convergence": [dict(r) | {"converged": not _not_converged(r)} for r in convergence],
        "variants": {},
        "efficiency": {k: dict(v) for k, v in (efficiency or {}).items()},
    }
    for label, runs in variants.items():
        missing = [s for s in seeds if s not in runs]
        if missing:
            raise ConfigError(f"compare: variant '{label}' lacks seed(s) {missing}")
        dms = [delta_m(runs[s], stl[s], metrics=primary) for s in seeds]
        dms_all = [delta_m(runs[s], stl[s]) for s in seeds]
        per_task = [delta_m_per_task(runs[s], stl[s], metrics=primary) for s in seeds]
        overall = interval(dms) | {"values": dms}
        task_dm = {t: interval([p[t] for p in per_task]) for t in tasks}
        not_converged = stl_flags + [r["text"] for r in flagged if r["model"] == label]
        result = {
            "metrics": _metric_stats(runs, seeds, tasks),
            "delta_m": overall,
            "delta_m_per_task": task_dm,
            "delta_m_all_metrics": interval(dms_all) | {"values": dms_all},
            "decision": decide(overall["ci"]),
            "task_decisions": {t: decide(r["ci"]) for t, r in task_dm.items()},
            "not_converged": not_converged,
        }
        result["verdict"] = verdict(label, result, primary)
        out["variants"][label] = result
    return out


def _not_converged(run: Mapping[str, Any]) -> bool:
    """Whether the run's selected epoch is the last one it trained."""
    return int(run["best_epoch"]) >= int(run["epochs_run"])


def _run_text(run: Mapping[str, Any]) -> str:
    name = "STL " + str(run.get("task")) if run["model"] == "stl" else str(run["model"])
    return (
        f"{name} seed {run['seed']} (best epoch {run['best_epoch']} of "
        f"{run['epochs_run']} run, budget {run.get('max_epochs', run['epochs_run'])})"
    )


def _metric_stats(
    runs: Mapping[int, dict[str, dict[str, float]]], seeds: Sequence[int], tasks: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        stats[task] = {}
        for metric in runs[seeds[0]][task]:
            stats[task][metric] = _stats([runs[s][task][metric] for s in seeds])
    return stats


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def _ci_text(stat: Mapping[str, Any]) -> str:
    """``+1.20 % (95 % CI −0.30 … +2.70)``, or ``+1.20 % (interval n/a: one seed)``."""
    if stat.get("ci") is None:
        return f"{_signed(stat['mean'])} % (interval n/a: one seed)"
    lo, hi = stat["ci"]
    return f"{_signed(stat['mean'])} % (95 % CI {_signed(lo)} … {_signed(hi)})"


def verdict(label: str, result: Mapping[str, Any], primary: Mapping[str, str]) -> str:
    """One sentence: Δm with its interval and how it was computed, the decision, each task's
    decision, and a warning when a run did not converge."""
    dm = result["delta_m"]
    n = dm["n"]
    on = ", ".join(f"{t}: {m}" for t, m in primary.items())
    how = f"t over {n} seeds, paired by seed" if n > 1 else "1 seed"
    text = (
        f"MTL ({label}) vs STL: Δm {_ci_text(dm)} [{how}; primary metrics {on}]: "
        f"{DECISIONS[result['decision']]}"
    )
    if n > 1:
        per_task = "; ".join(
            f"{t} {DECISIONS[d].removesuffix(' at this budget')}"
            for t, d in result["task_decisions"].items()
        )
        text += f". Per task: {per_task}"
    else:
        text += " (run --seeds 3 or more for an interval)"
    flags = result.get("not_converged") or []
    if flags:
        text += (
            f". Not converged: raise the budget ({len(flags)} run(s) selected their last "
            f"epoch: {'; '.join(flags[:3])}{' ...' if len(flags) > 3 else ''})"
        )
    return text + "."


def _value(stat: Mapping[str, Any], digits: int = 4) -> str:
    if stat.get("std") is None:
        return f"{stat['mean']:.{digits}f} (n/a)"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _dm_cell(stat: Mapping[str, Any]) -> str:
    if stat.get("ci") is None:
        return f"{_signed(stat['mean'])} (n/a)"
    lo, hi = stat["ci"]
    return f"{_signed(stat['mean'])} [{_signed(lo)}, {_signed(hi)}]"


def _epochs(summary: Mapping[str, Any], model: str, task: str | None) -> str:
    """Best epoch / epochs run per seed of a model (STL: of a task), ``!`` when not converged."""
    out = []
    for r in summary.get("convergence", []):
        if r["model"] == model and (model != "stl" or r.get("task") == task):
            mark = "" if r.get("converged", True) else "!"
            out.append(f"{r['best_epoch']}/{r['epochs_run']}{mark}")
    return " ".join(out)


def rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per (model, task, metric): mean ± std over seeds ("n/a" for one seed), whether
    it is the task's primary metric, the per-task Δm with its 95 % interval and decision, the
    overall Δm, and each seed's best epoch / epochs run ("!": not converged)."""
    out = []
    primary = summary.get("primary", {})
    for task, metrics in summary["stl"].items():
        for metric, stat in metrics.items():
            out.append(
                {
                    "model": "STL",
                    "task": task,
                    "metric": metric,
                    "primary": "yes" if primary.get(task) == metric else "",
                    "value": _value(stat),
                    "delta_m_task": "",
                    "task_decision": "",
                    "delta_m": "",
                    "decision": "",
                    "epochs": _epochs(summary, "stl", task),
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
                        "primary": "yes" if primary.get(task) == metric else "",
                        "value": _value(stat),
                        "delta_m_task": _dm_cell(res["delta_m_per_task"][task]),
                        "task_decision": res["task_decisions"][task],
                        "delta_m": _dm_cell(res["delta_m"]),
                        "decision": res["decision"],
                        "epochs": _epochs(summary, label, None),
                    }
                )
    return out


def _number(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def efficiency_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per model: parameters, training seconds, latency and throughput per batch and
    peak memory; STL sums its T models (trained one after the other, served one after the
    other)."""
    out = []
    for model, e in summary.get("efficiency", {}).items():
        if not isinstance(e, Mapping) or "params" not in e:
            continue
        out.append(
            {
                "model": "STL" if model == "stl" else model,
                "models": str(e.get("models", 1)),
                "params": f"{e['params']:,}",
                "train_s": _number(e.get("train_seconds"), ".1f"),
                "latency_ms": _number(e.get("latency_ms"), ".2f"),
                "throughput": _number(e.get("throughput"), ",.0f"),
                "peak_memory_mb": _number(e.get("peak_memory_mb"), ".1f"),
            }
        )
    return out


def to_csv(summary: Mapping[str, Any]) -> str:
    """The metric table as CSV (values ``mean ± std``; Δm in percent, ``mean [lo, hi]``)."""
    buffer = io.StringIO()
    table = rows(summary)
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def _legend(summary: Mapping[str, Any]) -> str:
    n = len(summary.get("seeds", []))
    spread = (
        f"mean ± std over {n} seeds; Δm: mean [95 % CI], t over {n} seeds, paired by seed"
        if n > 1
        else "one seed: spread and interval n/a (one seed cannot decide)"
    )
    return (
        f"Test metrics, {spread}. Δm (%) against the single-task models of the same seed on "
        "each task's primary metric (positive: MTL better). Models selected on validation; "
        "epochs: best/run per seed, '!' = best epoch was the last (not converged)."
    )


_EFFICIENCY_NOTE = (
    "Efficiency: STL sums its T models; training seconds are a mean over seeds; latency is "
    "the median time of one test batch (after a warm-up), throughput examples/s; peak memory "
    "on CUDA only (n/a elsewhere)."
)


def to_markdown(summary: Mapping[str, Any]) -> str:
    """The verdicts, the metric table and the efficiency table as Markdown."""
    lines = [f"- {res['verdict']}" for res in summary["variants"].values()]
    for label, res in summary["variants"].items():
        lines.append(f"- {label}: all-metric Δm {_ci_text(res['delta_m_all_metrics'])}")
    lines += ["", _legend(summary), ""]
    table = rows(summary)
    lines.append("| " + " | ".join(table[0]) + " |")
    lines.append("|" + "---|" * len(table[0]))
    lines += ["| " + " | ".join(r.values()) + " |" for r in table]
    eff = efficiency_rows(summary)
    if eff:
        lines += ["", _EFFICIENCY_NOTE, ""]
        lines.append("| " + " | ".join(eff[0]) + " |")
        lines.append("|" + "---|" * len(eff[0]))
        lines += ["| " + " | ".join(r.values()) + " |" for r in eff]
    return "\n".join(lines) + "\n"


def delta_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per (variant, task) and two per variant overall (primary metrics, all
    metrics): Δm with its 95 % interval ("n/a" for one seed) and the decision."""
    out = []
    for label, res in summary["variants"].items():
        for task, stat in res["delta_m_per_task"].items():
            metric = summary.get("primary", {}).get(task, "")
            out.append(
                {
                    "model": label,
                    "over": f"{task} ({metric})",
                    "delta_m": _dm_cell(stat),
                    "decision": res["task_decisions"][task],
                }
            )
        out.append(
            {
                "model": label,
                "over": "all tasks, primary metrics",
                "delta_m": _dm_cell(res["delta_m"]),
                "decision": res["decision"],
            }
        )
        all_metrics = res["delta_m_all_metrics"]
        out.append(
            {
                "model": label,
                "over": "all tasks, all metrics",
                "delta_m": _dm_cell(all_metrics),
                "decision": decide(all_metrics["ci"]),
            }
        )
    return out


def print_summary(summary: Mapping[str, Any], console: Console) -> None:
    """Three narrow tables (metrics with each seed's best/run epochs; Δm with its interval and
    decision; costs) and a verdict per variant."""
    from rich.table import Table as RichTable

    n = len(summary.get("seeds", []))
    spread = f"mean ± std over {n} seeds" if n > 1 else "one seed (spread n/a)"
    metrics = RichTable(
        title=f"Test metrics, {spread}; * primary metric; epochs: best/run per seed, "
        "! = best epoch was the last (not converged)"
    )
    for column in ("model", "task", "metric", "value", "epochs"):
        metrics.add_column(column)
    for r in rows(summary):
        star = "*" if r["primary"] else ""
        metrics.add_row(r["model"], r["task"], r["metric"] + star, r["value"], r["epochs"])
    console.print(metrics)
    how = f"t over {n} seeds, paired by seed" if n > 1 else "one seed: interval n/a"
    deltas = RichTable(title=f"Δm (%) against STL, mean [95 % CI] ({how}); > 0: MTL better")
    for column in ("model", "over", "Δm %", "decision"):
        deltas.add_column(column)
    for r in delta_rows(summary):
        deltas.add_row(*r.values())
    console.print(deltas)
    eff = efficiency_rows(summary)
    if eff:
        costs = RichTable(title=_EFFICIENCY_NOTE)
        for column in ("model", "models", "parameters", "train s", "ms/batch", "ex/s", "peak MB"):
            costs.add_column(column)
        for r in eff:
            costs.add_row(*r.values())
        console.print(costs)
    for res in summary["variants"].values():
        console.print(res["verdict"], markup=False)
