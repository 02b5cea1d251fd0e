"""Δm, the relative gain of a multi-task model over single-task baselines, and mean ± std.

The direction of each metric (higher or lower is better) comes from :data:`METRICS`, so Δm
needs no more than the two result tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mtlkit.errors import ConfigError
from mtlkit.tasks.metrics import Direction, get_metric


def delta_m(
    mtl: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, Direction]] | None = None,
) -> float:
    """Δm in percent: the mean relative per-metric change of ``mtl`` over ``baseline``.

    Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks"::

        Δm = 100 / K · Σ_k (−1)^{l_k} (M_mtl,k − M_base,k) / M_base,k

    over the K (task, metric) pairs of ``baseline``, where l_k = 1 if lower is better for
    metric k and 0 otherwise. Positive Δm means the multi-task model is better on average.
    ``directions[task][metric]`` overrides the registry's direction of a metric.

    Accuracy 2 % higher on one task, MAE 10 % higher (worse) on the other:

    >>> round(delta_m({"a": {"accuracy": 0.918}, "b": {"mae": 1.1}},
    ...               {"a": {"accuracy": 0.9}, "b": {"mae": 1.0}}), 6)
    -4.0
    """
    terms: list[float] = []
    for task, metrics in baseline.items():
        if task not in mtl:
            raise ConfigError(f"Δm: task '{task}' has baseline metrics but no MTL metrics")
        for name, base in metrics.items():
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


def delta_m_per_task(
    mtl: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """Δm restricted to each task's own metrics (same formula as :func:`delta_m`)."""
    return {t: delta_m({t: mtl[t]}, {t: m}) for t, m in baseline.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


__all__ = ["delta_m", "delta_m_per_task", "mean_std"]
