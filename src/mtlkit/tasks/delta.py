"""Δm, the relative gain of a multi-task model over single-task baselines, and the
Student-t interval and decision over seeds that every verdict uses.

The direction of each metric (higher or lower is better) comes from :data:`METRICS`, so Δm
needs no more than the two result tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtlkit.errors import ConfigError
from mtlkit.tasks.metrics import Direction, get_metric


def delta_m(
    mtl: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, Direction]] | None = None,
    metrics: Mapping[str, str | Sequence[str]] | None = None,
) -> float:
    """Δm in percent: the mean relative per-metric change of ``mtl`` over ``baseline``.

    Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks"::

        Δm = 100 / K · Σ_k (−1)^{l_k} (M_mtl,k − M_base,k) / M_base,k

    over the K (task, metric) pairs of ``baseline``, where l_k = 1 if lower is better for
    metric k and 0 otherwise. Positive Δm means the multi-task model is better on average.
    ``directions[task][metric]`` overrides the registry's direction of a metric.

    ``metrics[task]`` (a metric name or a list of them) restricts the sum to those metrics of
    each task, e.g. one primary metric per task so that correlated metrics (accuracy and
    macro-F1) do not count twice; every task of ``baseline`` must then be named.

    Accuracy 2 % higher on one task, MAE 10 % higher (worse) on the other:

    >>> round(delta_m({"a": {"accuracy": 0.918}, "b": {"mae": 1.1}},
    ...               {"a": {"accuracy": 0.9}, "b": {"mae": 1.0}}), 6)
    -4.0

    The same on accuracy alone (the primary metric of task ``a``):

    >>> round(delta_m({"a": {"accuracy": 0.918, "macro_f1": 0.5}},
    ...               {"a": {"accuracy": 0.9, "macro_f1": 0.6}}, metrics={"a": "accuracy"}), 6)
    2.0
    """
    terms: list[float] = []
    for task, values in _restricted(baseline, metrics).items():
        if task not in mtl:
            raise ConfigError(f"Δm: task '{task}' has baseline metrics but no MTL metrics")
        for name, base in values.items():
            if name not in mtl[task]:
                raise ConfigError(f"Δm: task '{task}' lacks metric '{name}' in the MTL results")
            if base == 0 or not math.isfinite(base):
                raise ConfigError(
                    f"Δm: task '{task}' metric '{name}' has baseline {base}; "
                    "a relative change needs a finite non-zero baseline"
                )
            direction = (directions or {}).get(task, {}).get(name) or get_metric(name).direction
            sign = 1.0 if direction == "max" else -1.0
            terms.append(sign * (mtl[task][name] - base) / abs(base))
    if not terms:
        raise ConfigError("Δm: the baseline has no metrics")
    return 100.0 * float(np.mean(terms))


def _restricted(
    baseline: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, str | Sequence[str]] | None,
) -> Mapping[str, Mapping[str, float]]:
    """``baseline`` with each task's metrics cut to ``metrics[task]`` (None: all of them)."""
    if metrics is None:
        return baseline
    out: dict[str, dict[str, float]] = {}
    for task, values in baseline.items():
        if task not in metrics:
            raise ConfigError(
                f"Δm: task '{task}' has no chosen metric (metrics names {', '.join(metrics)})"
            )
        chosen = metrics[task]
        names = [chosen] if isinstance(chosen, str) else list(chosen)
        unknown = [n for n in names if n not in values]
        if unknown or not names:
            raise ConfigError(
                f"Δm: task '{task}': metric(s) {', '.join(unknown) or '(none)'} chosen, "
                f"but the baseline reports {', '.join(values) or 'none'}"
            )
        out[task] = {n: values[n] for n in names}
    return out


def delta_m_per_task(
    mtl: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, str | Sequence[str]] | None = None,
) -> dict[str, float]:
    """Δm restricted to each task's own metrics (same formula as :func:`delta_m`);
    ``metrics`` restricts each task to the metrics it names, as there."""
    cut = _restricted(baseline, metrics)
    return {t: delta_m({t: mtl[t]}, {t: m}) for t, m in cut.items()}


#: the confidence level of every interval over seeds
CONFIDENCE = 0.95


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean.

    ``{"mean", "std", "ci": [lo, hi], "n"}`` with ``ci = mean ± t_{n−1, (1+c)/2} · std/√n``.
    With one value there is no spread: ``std`` and ``ci`` are None (never 0).

    >>> r = interval([1.0, 3.0])  # t_{1, 0.975} = 12.706
    >>> [round(x, 3) for x in r["ci"]]
    [-10.706, 14.706]
    """
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        raise ConfigError("an interval needs at least one value")
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci": None, "n": n}
    std = float(arr.std(ddof=1))
    half = half_width(std, n, confidence)
    return {"mean": mean, "std": std, "ci": [mean - half, mean + half], "n": n}


def half_width(std: float | None, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width t_{n−1, (1+c)/2} · std/√n of the interval of a mean of ``n`` values; 0 when
    there is no interval (one value, or no finite std)."""
    if n < 2 or std is None or not math.isfinite(std):
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def decide(ci: Sequence[float] | None) -> str:
    """ "better" when the whole interval is above 0, "worse" when below, "no detectable
    difference" when it holds 0 (a bound at exactly 0 included), "undecided" without one."""
    if ci is None:
        return "undecided"
    lo, hi = ci
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no detectable difference"


__all__ = ["CONFIDENCE", "decide", "delta_m", "delta_m_per_task", "half_width", "interval"]
