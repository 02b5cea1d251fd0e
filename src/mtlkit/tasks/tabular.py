"""Per-sample tasks: one prediction per input (a table row, a whole image, a sentence).

Importing this module registers:

- task kinds ``classification`` (output ``(B, C)`` logits, target ``(B,)`` class indices;
  loss ``cross_entropy``; metrics ``accuracy``, ``macro_f1``), ``binary`` (output ``(B,)`` or
  ``(B, 1)`` logits, target in {0, 1}; loss ``bce``; metrics ``accuracy``, ``auroc``),
  ``multilabel`` (output and target ``(B, L)``; loss ``bce``; metric ``macro_f1_multilabel``)
  and ``regression`` (output ``(B, D)``, target ``(B, D)`` or ``(B,)`` for D = 1; loss
  ``mse``; metrics ``mae``, ``rmse``, ``r2``);
- losses ``cross_entropy``, ``bce``, ``mse``, ``l1``, ``smooth_l1``;
- metrics ``accuracy``, ``macro_f1``, ``auroc``, ``mae``, ``rmse``, ``r2``,
  ``macro_f1_multilabel`` and ``multilabel_map``: the mean over labels of the average
  precision of the label's scores (the multi-label classification metric of PASCAL VOC /
  COCO, e.g. Everingham et al., 2010, "The PASCAL Visual Object Classes (VOC) Challenge",
  IJCV, non-interpolated form).

Missing labels are ``-100`` (integer targets) or NaN (float targets), as in
:mod:`mtlkit.tasks.losses`; :class:`StandardizedMSE` is the loss of a regression target that
a ``standardized`` head predicts in its original units.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks._task import TASK_KINDS, TaskKind
from mtlkit.tasks.losses import (
    IGNORE_INDEX,
    LABELLED_LOSSES,
    LOSSES,
    empty_loss,
    masked_cross_entropy,
)
from mtlkit.tasks.metrics import Accumulator, Sums, metric

CLASSIFICATION = TaskKind("classification", "cross_entropy", ("accuracy", "macro_f1"), True, True)
BINARY = TaskKind(
    "binary",
    "bce",
    ("accuracy", "auroc"),
    False,
    False,
    binary_targets=True,
    primary_metric="auroc",
)
MULTILABEL = TaskKind(
    "multilabel", "bce", ("macro_f1_multilabel",), False, False, binary_targets=True
)
REGRESSION = TaskKind("regression", "mse", ("mae", "rmse", "r2"), False, False)
for _kind in (CLASSIFICATION, BINARY, MULTILABEL, REGRESSION):
    TASK_KINDS.register(_kind.name, _kind)


# --------------------------------------------------------------------------- losses


@LOSSES.register("cross_entropy")
def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy over dim 1 (works per sample, per token and per pixel), mean over
    the labelled entries; exactly 0 (still depending on ``output``) when none is labelled.
    Nothing is read back from the device: the mean is the sum over the count, at least 1."""
    return masked_cross_entropy(output, target.long())


@LABELLED_LOSSES.register("cross_entropy")
def labelled_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """:func:`cross_entropy` of a target whose every entry is a valid label: the plain mean
    (the count is the target's size; no mask to build, sum and divide by)."""
    return F.cross_entropy(output.float(), target.long())


def _masked_float(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    out = output.float().reshape(target.shape)
    keep = ~torch.isnan(target)  # NaN marks a missing label; inf is bad data and stays
    return out[keep], target[keep].float()


@LOSSES.register("bce")
def bce(output: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, for binary and multi-label targets in {0, 1}."""
    out, tgt = _masked_float(output, target.float())
    return F.binary_cross_entropy_with_logits(out, tgt) if tgt.numel() else empty_loss(output)


@LOSSES.register("mse")
def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.mse_loss(out, tgt) if tgt.numel() else empty_loss(output)


@LOSSES.register("l1")
def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.l1_loss(out, tgt) if tgt.numel() else empty_loss(output)


@LOSSES.register("smooth_l1")
def smooth_l1(output: Tensor, target: Tensor) -> Tensor:
    """Huber-style smooth L1 (β = 1) over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.smooth_l1_loss(out, tgt) if tgt.numel() else empty_loss(output)


class StandardizedMSE:
    """MSE of standardised values: ``mean((ŷ − y)²) / std²`` for outputs in original units,
    over the labelled targets (NaN marks a missing label, as in ``mse``)."""

    def __init__(self, std: float) -> None:
        if not std > 0:
            raise ConfigError(f"loss 'standardized_mse': option 'std' must be > 0, got {std}")
        self.std = float(std)

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        out, tgt = _masked_float(output, target.float())
        return F.mse_loss(out, tgt) / self.std**2 if tgt.numel() else empty_loss(output)

    def __repr__(self) -> str:
        return f"StandardizedMSE(std={self.std:.6g})"


# --------------------------------------------------------------------------- helpers


def class_predictions(output: Tensor, target: Tensor) -> Tensor:
    """Predicted labels: argmax over the class dimension, or a 0 threshold on logits for
    binary outputs shaped like the target (or with a trailing singleton).

    The class dimension is dim 1 (``(B, C)``, ``(B, C, H, W)``) when the other dimensions fit
    the target, else the last one (per-token ``(B, L, C)``); a layout that fits neither is an
    error rather than a silently wrong score.
    """
    dim = _class_dim(output, target)
    if dim is None:
        return (output.reshape(target.shape) > 0).long()
    return output.argmax(dim=dim)


def _class_dim(output: Tensor, target: Tensor) -> int | None:
    """The class dimension of ``output`` (see :func:`class_predictions`); None: binary."""
    if output.dim() == target.dim() + 1 and output.shape[-1] > 1:
        if output.shape[0] == target.shape[0] and output.shape[2:] == target.shape[1:]:
            return 1
        if output.shape[:-1] == target.shape:
            return -1
        raise TaskDataError(
            f"output shape {tuple(output.shape)} has no class dimension that fits "
            f"target shape {tuple(target.shape)}"
        )
    return None


def _valid(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    keep = target != ignore_index
    return pred[keep], target[keep]


def _scores(output: Tensor, target: Tensor) -> np.ndarray:
    """Class-probability scores for AUROC: sigmoid for binary logits, softmax otherwise."""
    if output.dim() == target.dim() + 1 and output.shape[1] > 1:
        if output.dim() > 2:
            raise TaskDataError("auroc scores one prediction per sample: (B,) or (B, C) outputs")
        return torch.softmax(output.float(), dim=1).numpy()
    return torch.sigmoid(output.float().reshape(target.shape)).numpy()


def ratio(sums: dict[str, Tensor], top: str, bottom: str = "count") -> float:
    """``sums[top] / sums[bottom]`` as a float, NaN when nothing was counted."""
    if bottom not in sums or float(sums[bottom]) == 0:
        return math.nan
    return float(sums[top].double()) / float(sums[bottom].double())


def class_f1(sums: dict[str, Tensor]) -> float:
    """Macro F1 from per-class counts ``tp``, ``pred`` and ``gold`` (classes in either)."""
    if "tp" not in sums:
        return math.nan
    denom = (sums["pred"] + sums["gold"]).double()
    present = denom > 0
    if not bool(present.any()):
        return math.nan
    return float(np.mean((2 * sums["tp"].double()[present] / denom[present]).numpy()))


def class_counts(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per-class true positives, predictions and gold labels of 1-D label tensors."""
    size = int(max(pred.max(), target.max())) + 1 if target.numel() else 0
    return {
        "tp": torch.bincount(target[pred == target], minlength=size),
        "pred": torch.bincount(pred, minlength=size),
        "gold": torch.bincount(target, minlength=size),
    }


def _labelled_predictions(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The predicted labels, the labels (int64) and which entries are labelled (not
    :data:`IGNORE_INDEX`), all of the target's shape: no indexing, so no read-back."""
    tgt = target.long()
    return class_predictions(output, target), tgt, tgt != IGNORE_INDEX


def _num_classes(output: Tensor, target: Tensor) -> int:
    """The number of classes ``output`` scores (2 for binary logits)."""
    dim = _class_dim(output, target)
    return 2 if dim is None else int(output.shape[dim])


#: up to this many classes, :func:`masked_class_counts` counts through a confusion matrix
CONFUSION_CLASSES = 64


def masked_class_counts(
    pred: Tensor, target: Tensor, keep: Tensor, classes: int = 0
) -> dict[str, Tensor]:
    """:func:`class_counts` of the entries ``keep`` selects, without selecting them (no
    read-back); the three counts have one length, at least ``classes``.

    With at most :data:`CONFUSION_CLASSES` classes, one bincount of ``target · classes +
    pred`` gives the confusion matrix, whose diagonal, column and row sums are the counts;
    a label at or above ``classes`` (unchecked data) shows in the bincount's length, known
    without a read-back, and the counts then come from three bincounts of the label plus one
    (0 for the entries left out, its bin dropped)."""
    if 0 < classes <= CONFUSION_CLASSES:
        cells = torch.bincount(
            torch.where(keep, target * classes + pred + 1, 0).reshape(-1),
            minlength=classes * classes + 1,
        )
        if cells.shape[0] == classes * classes + 1:
            confusion = cells[1:].view(classes, classes)  # gold label × prediction
            return {"tp": confusion.diagonal(), "pred": confusion.sum(0), "gold": confusion.sum(1)}
    hit = keep & (pred == target)

    def count(labels: Tensor, selected: Tensor) -> Tensor:
        shifted = torch.where(selected, labels + 1, 0).reshape(-1)
        return torch.bincount(shifted, minlength=classes + 1)[1:]

    counts = {"tp": count(target, hit), "pred": count(pred, keep), "gold": count(target, keep)}
    size = max(c.shape[0] for c in counts.values())
    return {
        k: F.pad(c, (0, size - c.shape[0])) if c.shape[0] < size else c for k, c in counts.items()
    }


class AccuracySums(Sums):
    """``accuracy`` batch by batch: correct predictions and labelled samples."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        pred, tgt, keep = _labelled_predictions(output, target)
        return {"correct": (keep & (pred == tgt)).sum(), "count": keep.sum()}

    def value(self, sums: dict[str, Tensor]) -> float:
        return ratio(sums, "correct")


class MacroF1Sums(Sums):
    """``macro_f1`` batch by batch: per-class true positives, predictions and labels."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        pred, tgt, keep = _labelled_predictions(output, target)
        return masked_class_counts(pred, tgt, keep, _num_classes(output, target))

    def value(self, sums: dict[str, Tensor]) -> float:
        return class_f1(sums)


# --------------------------------------------------------------------------- classification


@metric("accuracy", "max", AccuracySums)
def accuracy(output: Tensor, target: Tensor) -> float:
    """Share of correct predictions (labels equal to -100 are ignored)."""
    pred, tgt = _valid(class_predictions(output, target), target.long())
    return float((pred == tgt).double().mean()) if tgt.numel() else math.nan


@metric("macro_f1", "max", MacroF1Sums)
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


def binary_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve of 0/1 labels ``y`` and ``scores``: the probability that a
    positive scores above a negative, ties counting one half (Mann–Whitney U from average
    ranks); NaN without both classes.

    >>> binary_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    u = ranks[y].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


@metric("auroc", "max")
def auroc(output: Tensor, target: Tensor) -> float:
    """Area under the ROC curve; one-vs-rest macro average for more than two classes.

    AUROC ranks every score of the split, so it has no streaming accumulator: evaluation
    keeps this metric's outputs and targets of the whole split (one score per class and
    sample, small for per-sample tasks).
    """
    keep = (target != IGNORE_INDEX).numpy()
    y = target.long().numpy()[keep]
    scores = _scores(output, target)[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    if scores.ndim == 1:
        return binary_auroc(y == 1, scores)
    present = np.unique(y)
    if len(present) < scores.shape[1]:  # restrict to classes seen, renormalised
        scores = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
        y = np.searchsorted(present, y)
    return float(np.mean([binary_auroc(y == c, scores[:, c]) for c in range(scores.shape[1])]))


# --------------------------------------------------------------------------- regression


def _regression_pair(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    out = output.double().reshape(target.shape)
    tgt = target.double()
    keep = torch.isfinite(tgt)
    return out[keep], tgt[keep]


class ErrorSums(Sums):
    """``mae`` (``power=1``) or ``rmse`` (``power=2``) batch by batch."""

    power = 1

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        out, tgt = _regression_pair(output, target)
        return {
            "error": (out - tgt).abs().pow(self.power).sum(),
            "count": torch.tensor(tgt.numel()),
        }

    def value(self, sums: dict[str, Tensor]) -> float:
        mean = ratio(sums, "error")
        return mean if self.power == 1 else math.sqrt(mean)


class SquaredErrorSums(ErrorSums):
    power = 2


class R2Moments(Accumulator):
    """``r2`` batch by batch: the count, mean and centred sum of squares of the targets
    (merged as Chan, Golub & LeVeque, 1979, so no large sums cancel) and SS_res."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.ss_res = 0, 0.0, 0.0, 0.0

    def update(self, output: Tensor, target: Tensor) -> None:
        out, tgt = _regression_pair(output, target)
        if tgt.numel():
            mean = float(tgt.mean())
            other = R2Moments()
            other.n, other.mean = tgt.numel(), mean
            other.m2 = float((tgt - mean).pow(2).sum())
            other.ss_res = float((out - tgt).pow(2).sum())
            self.merge(other)

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, R2Moments)
        n = self.n + other.n
        if other.n == 0:
            return
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        self.ss_res += other.ss_res

    def compute(self) -> float:
        if self.n < 2 or self.m2 == 0.0:
            return math.nan
        return 1.0 - self.ss_res / self.m2


@metric("mae", "min", ErrorSums)
def mae(output: Tensor, target: Tensor) -> float:
    """Mean absolute error over finite targets."""
    out, tgt = _regression_pair(output, target)
    return float((out - tgt).abs().mean()) if tgt.numel() else math.nan


@metric("rmse", "min", SquaredErrorSums)
def rmse(output: Tensor, target: Tensor) -> float:
    """Root mean squared error over finite targets."""
    out, tgt = _regression_pair(output, target)
    return float((out - tgt).pow(2).mean().sqrt()) if tgt.numel() else math.nan


@metric("r2", "max", R2Moments)
def r2(output: Tensor, target: Tensor) -> float:
    """Coefficient of determination, 1 − SS_res / SS_tot, pooled over all target entries."""
    out, tgt = _regression_pair(output, target)
    ss_tot = float((tgt - tgt.mean()).pow(2).sum())
    if tgt.numel() < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float((out - tgt).pow(2).sum()) / ss_tot


# --------------------------------------------------------------------------- multi-label


class MultilabelF1Sums(Sums):
    """``macro_f1_multilabel`` batch by batch: per-label TP, FP and FN."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        pred = (output.reshape(target.shape) > 0).double()
        tgt = target.double()
        keep = torch.isfinite(tgt)
        pred, tgt = torch.where(keep, pred, 0.0), torch.where(keep, tgt, 0.0)
        dims = tuple(range(tgt.dim() - 1))
        return {
            "tp": (pred * tgt).sum(dims),
            "fp": (pred * (1 - tgt) * keep).sum(dims),
            "fn": ((1 - pred) * tgt * keep).sum(dims),
        }

    def value(self, sums: dict[str, Tensor]) -> float:
        if "tp" not in sums:
            return math.nan
        denom = 2 * sums["tp"] + sums["fp"] + sums["fn"]
        present = denom > 0
        scores = (2 * sums["tp"][present] / denom[present]).tolist()
        return float(np.mean(scores)) if scores else math.nan


@metric("macro_f1_multilabel", "max", MultilabelF1Sums)
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


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Non-interpolated AP of one label: the mean, over the positives, of the precision at
    each positive's rank when the samples are sorted by decreasing score (NaN without
    positives). Tied scores are ranked together: each gets the precision at the tie's end."""
    s = scores.double().numpy()
    y = labels.double().numpy() > 0.5
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # the end of each run of equal scores
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    end = np.repeat(last, np.diff(np.r_[-1, last]))
    precision = tp[end] / (end + 1)
    return float(precision[y].sum() / y.sum())


@metric("multilabel_map", "max")
def multilabel_map(output: Tensor, target: Tensor) -> float:
    """Mean over labels (with at least one positive) of the average precision of the logits.

    Average precision ranks every score of the split, so it has no streaming accumulator:
    evaluation keeps this metric's outputs and targets of the whole split.
    """
    out = output.reshape(target.shape).float()
    keep = torch.isfinite(target.float())
    values = []
    for j in range(target.shape[-1]):
        k = keep[..., j]
        ap = average_precision(out[..., j][k], target[..., j][k].float())
        if not math.isnan(ap):
            values.append(ap)
    return float(np.mean(values)) if values else math.nan


__all__ = [
    "BINARY",
    "CLASSIFICATION",
    "MULTILABEL",
    "REGRESSION",
    "AccuracySums",
    "ErrorSums",
    "MacroF1Sums",
    "MultilabelF1Sums",
    "R2Moments",
    "SquaredErrorSums",
    "StandardizedMSE",
    "accuracy",
    "auroc",
    "average_precision",
    "bce",
    "class_counts",
    "class_f1",
    "class_predictions",
    "cross_entropy",
    "l1",
    "macro_f1",
    "macro_f1_multilabel",
    "mae",
    "masked_class_counts",
    "mse",
    "multilabel_map",
    "r2",
    "ratio",
    "rmse",
    "smooth_l1",
]
