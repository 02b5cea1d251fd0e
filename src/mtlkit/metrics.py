"""Metrics with a direction (higher or lower is better), and Δm.

A metric is a function ``(output, target) -> float`` over a whole evaluation split, where
``output`` is what the task's head produced (logits for classification) and ``target`` the
labels. Every metric is registered in :data:`METRICS` with its direction, so model selection
and Δm know which way is better without being told.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    """A named metric: its function and whether higher (``max``) or lower (``min``) is better."""

    name: str
    fn: Callable[[Tensor, Tensor], float]
    direction: Direction

    def __call__(self, output: Tensor, target: Tensor) -> float:
        return float(self.fn(output, target))

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, direction: Direction) -> Callable[[Callable[..., float]], Callable]:
    """Decorator registering a metric function under ``name`` with its direction."""

    def wrap(fn: Callable[[Tensor, Tensor], float]) -> Callable[[Tensor, Tensor], float]:
        METRICS.register(name, Metric(name, fn, direction))
        return fn

    return wrap


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    return METRICS.lookup(name)


def better(a: float, b: float, direction: Direction) -> bool:
    """Whether value ``a`` is strictly better than ``b`` under ``direction``."""
    return a > b if direction == "max" else a < b


# --------------------------------------------------------------------------- helpers


def class_predictions(output: Tensor, target: Tensor) -> Tensor:
    """Predicted labels: argmax over the class dimension, or a 0 threshold on logits for
    binary outputs shaped like the target (or with a trailing singleton).

    The class dimension is dim 1 (``(B, C)``, ``(B, C, H, W)``) when the other dimensions fit
    the target, else the last one (per-token ``(B, L, C)``); a layout that fits neither is an
    error rather than a silently wrong score.
    """
    if output.dim() == target.dim() + 1 and output.shape[-1] > 1:
        if output.shape[0] == target.shape[0] and output.shape[2:] == target.shape[1:]:
            return output.argmax(dim=1)
        if output.shape[:-1] == target.shape:
            return output.argmax(dim=-1)
        raise TaskDataError(
            f"output shape {tuple(output.shape)} has no class dimension that fits "
            f"target shape {tuple(target.shape)}"
        )
    return (output.reshape(target.shape) > 0).long()


def _valid(pred: Tensor, target: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    keep = target != ignore_index
    return pred[keep], target[keep]


def _scores(output: Tensor, target: Tensor) -> np.ndarray:
    """Class-probability scores for AUROC: sigmoid for binary logits, softmax otherwise."""
    if output.dim() == target.dim() + 1 and output.shape[1] > 1:
        if output.dim() > 2:
            raise TaskDataError("auroc scores one prediction per sample: (B,) or (B, C) outputs")
        return torch.softmax(output.float(), dim=1).numpy()
    return torch.sigmoid(output.float().reshape(target.shape)).numpy()


# --------------------------------------------------------------------------- classification


@metric("accuracy", "max")
def accuracy(output: Tensor, target: Tensor) -> float:
    """Share of correct predictions (labels equal to -100 are ignored)."""
    pred, tgt = _valid(class_predictions(output, target), target.long())
    return float((pred == tgt).float().mean()) if tgt.numel() else math.nan


@metric("macro_f1", "max")
def macro_f1(output: Tensor, target: Tensor) -> float:
    """F1 averaged over the classes that occur in the target or the prediction."""
    pred, tgt = _valid(class_predictions(output, target), target.long())
    if tgt.numel() == 0:
        return math.nan
    scores = []
    for c in torch.unique(torch.cat([pred, tgt])).tolist():
        tp = float(((pred == c) & (tgt == c)).sum())
        fp = float(((pred == c) & (tgt != c)).sum())
        fn = float(((pred != c) & (tgt == c)).sum())
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


@metric("auroc", "max")
def auroc(output: Tensor, target: Tensor) -> float:
    """Area under the ROC curve; one-vs-rest macro average for more than two classes."""
    from sklearn.metrics import roc_auc_score

    keep = (target != -100).numpy()
    y = target.long().numpy()[keep]
    scores = _scores(output, target)[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    if scores.ndim == 1:
        return float(roc_auc_score(y, scores))
    present = np.unique(y)
    if len(present) < scores.shape[1]:  # restrict to classes seen, renormalised
        scores = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
        y = np.searchsorted(present, y)
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro"))


# --------------------------------------------------------------------------- regression


def _regression_pair(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    out = output.double().reshape(target.shape)
    tgt = target.double()
    keep = torch.isfinite(tgt)
    return out[keep], tgt[keep]


@metric("mae", "min")
def mae(output: Tensor, target: Tensor) -> float:
    """Mean absolute error over finite targets."""
    out, tgt = _regression_pair(output, target)
    return float((out - tgt).abs().mean()) if tgt.numel() else math.nan


@metric("rmse", "min")
def rmse(output: Tensor, target: Tensor) -> float:
    """Root mean squared error over finite targets."""
    out, tgt = _regression_pair(output, target)
    return float((out - tgt).pow(2).mean().sqrt()) if tgt.numel() else math.nan


@metric("r2", "max")
def r2(output: Tensor, target: Tensor) -> float:
    """Coefficient of determination, 1 − SS_res / SS_tot, pooled over all target entries."""
    out, tgt = _regression_pair(output, target)
    ss_tot = float((tgt - tgt.mean()).pow(2).sum())
    if tgt.numel() < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float((out - tgt).pow(2).sum()) / ss_tot


# --------------------------------------------------------------------------- Δm


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


@metric("macro_f1_multilabel", "max")
def macro_f1_multilabel(output: Tensor, target: Tensor) -> float:
    """Multi-label F1 averaged over labels (logit > 0 is a positive prediction)."""
    pred = (output.reshape(target.shape) > 0).float()
    tgt = target.float()
    keep = torch.isfinite(tgt)
    scores = []
    for j in range(tgt.shape[-1]):
        k = keep[..., j]
        p, t = pred[..., j][k], tgt[..., j][k]
        tp, fp, fn = float((p * t).sum()), float((p * (1 - t)).sum()), float(((1 - p) * t).sum())
        if 2 * tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan
