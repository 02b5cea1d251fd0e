"""Dense (per-pixel) tasks: semantic segmentation, depth and surface normals.

Importing this module registers:

- ``segmentation``: output ``(B, C, H, W)``, target ``(B, H, W)``; loss
  ``segmentation_cross_entropy``; metrics ``miou``, ``pixel_accuracy``.
- ``depth``: output ``(B, 1, H, W)``, target ``(B, H, W)`` or ``(B, 1, H, W)``; loss
  ``depth_l1``; metrics ``depth_abs_err``, ``depth_rel_err``.
- ``normals`` (``num_outputs=3``): output and target ``(B, 3, H, W)``; loss ``normal_cosine``;
  metrics ``normal_mean_angle``, ``normal_median_angle``, ``normal_within_11_25``,
  ``normal_within_22_5``, ``normal_within_30``.

A batch with nothing valid has an exact zero loss that still depends on the output (so
backward runs and sends zero gradient), as in :mod:`mtlkit.tasks.losses`. The losses are
those of the MTAN benchmark (Liu, Johns & Davison, 2019, "End-to-End Multi-Task Learning with
Attention", CVPR): pixel-wise cross-entropy, L1 on valid depth, and 1 − cosine similarity for
normals.

The metrics are those of the NYUv2 / Cityscapes multi-task benchmarks as used since MTAN, and
Eigen & Fergus, 2015, "Predicting Depth, Surface Normals and Semantic Labels with a Common
Multi-Scale Convolutional Architecture", ICCV. Every metric pools all valid pixels of the
split (it is not a mean of per-image or per-batch values). Evaluation streams them: each
metric accumulates per-batch sums (a confusion matrix, error totals, counts), so its memory
does not grow with the split, except the median angle, which keeps one float64 angle per
valid pixel:

- segmentation (output ``(N, C, H, W)`` logits, target ``(N, H, W)`` labels): pixels labelled
  255, −1 or −100 are ignored. ``miou`` is the mean over classes of TP / (TP + FP + FN),
  taken over the classes that occur in the target or the prediction (a class with an empty
  union has no IoU); ``pixel_accuracy`` is the share of valid pixels predicted right.
- depth (output ``(N, 1, H, W)``, target ``(N, H, W)`` or ``(N, 1, H, W)``): a pixel is valid
  when its target is finite and > 0 (sensors write 0 or NaN where they have no reading).
  ``depth_abs_err`` = mean |d̂ − d|, ``depth_rel_err`` = mean |d̂ − d| / d.
- surface normals (output and target ``(N, 3, H, W)``): a pixel is valid when its target is
  finite and non-zero. The prediction is L2-normalised; the error is the angle in degrees
  between prediction and target. ``normal_mean_angle``, ``normal_median_angle`` and the share
  (a fraction in [0, 1], not a percentage) of valid pixels within 11.25°, 22.5° and 30°.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.tasks._task import TASK_KINDS, TaskKind
from mtlkit.tasks.losses import IGNORE_INDEX, LOSSES, empty_loss, masked_cross_entropy
from mtlkit.tasks.metrics import Accumulator, Sums, metric

SEGMENTATION_IGNORE: tuple[int, ...] = (IGNORE_INDEX, -1, 255)
"""Segmentation labels that mark a pixel as unlabelled."""


@dataclass(frozen=True)
class DenseKind(TaskKind):
    """A per-pixel kind: outputs ``(B, K, H, W)``; targets ``(B, H, W)`` or ``(B, K, H, W)``.

    ``ignore_labels`` are the integer labels that mark an unlabelled pixel.
    """

    ignore_labels: tuple[int, ...] = (IGNORE_INDEX,)

    def expected_output_shape(self, target: Tensor, num_outputs: int) -> tuple[int, ...]:
        if self.class_dim or (target.dim() == 3 and num_outputs == 1):
            return (target.shape[0], num_outputs, *target.shape[1:])
        return tuple(target.shape)


SEGMENTATION = DenseKind(
    "segmentation",
    "segmentation_cross_entropy",
    ("miou", "pixel_accuracy"),
    integer_targets=True,
    class_dim=True,
    ignore_labels=SEGMENTATION_IGNORE,
)
DEPTH = DenseKind("depth", "depth_l1", ("depth_abs_err", "depth_rel_err"), False, False)
NORMALS = DenseKind(
    "normals",
    "normal_cosine",
    (
        "normal_mean_angle",
        "normal_median_angle",
        "normal_within_11_25",
        "normal_within_22_5",
        "normal_within_30",
    ),
    False,
    False,
)
for _kind in (SEGMENTATION, DEPTH, NORMALS):
    TASK_KINDS.register(_kind.name, _kind)


def _fit(output: Tensor, target: Tensor, expected: tuple[int, ...], loss: str) -> None:
    if tuple(output.shape) != tuple(expected):
        raise TaskDataError(
            f"loss '{loss}': output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected output {tuple(expected)})"
        )


# --------------------------------------------------------------------------- segmentation


def segmentation_valid(target: Tensor) -> Tensor:
    """Boolean mask of labelled pixels (target not 255, −1 or −100)."""
    keep = torch.ones_like(target, dtype=torch.bool)
    for value in SEGMENTATION_IGNORE:
        keep &= target != value
    return keep


@LOSSES.register("segmentation_cross_entropy")
def segmentation_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy over dim 1, mean over pixels not labelled 255, −1 or −100."""
    _fit(output, target, (target.shape[0], output.shape[1], *target.shape[1:]), "segmentation")
    keep = segmentation_valid(target)
    labels = torch.where(keep, target.long(), torch.full_like(target.long(), IGNORE_INDEX))
    return masked_cross_entropy(output, labels)  # no read-back; 0 without a valid pixel


def confusion_matrix(output: Tensor, target: Tensor) -> Tensor:
    """The ``(C, C)`` confusion matrix (rows: true class, columns: predicted) of valid pixels."""
    if output.dim() != target.dim() + 1 or (
        tuple(output.shape[:1]) + tuple(output.shape[2:]) != tuple(target.shape)
    ):
        raise TaskDataError(
            f"segmentation metric: output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected output (N, C, *target.shape[1:]))"
        )
    num_classes = output.shape[1]
    pred = output.argmax(dim=1)
    keep = segmentation_valid(target)
    tgt = target[keep].long()
    if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= num_classes):
        bad = int(tgt.min()) if int(tgt.min()) < 0 else int(tgt.max())
        raise TaskDataError(
            f"segmentation metric: label {bad} is out of range [0, {num_classes}) "
            "(use 255 for an unlabelled pixel)"
        )
    index = tgt * num_classes + pred[keep]
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionSums(Sums):
    """``miou`` or ``pixel_accuracy`` batch by batch: the confusion matrix of valid pixels."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"confusion": confusion_matrix(output, target)}

    def value(self, sums: dict[str, Tensor]) -> float:
        if "confusion" not in sums:
            return math.nan
        return iou_from_confusion(sums["confusion"])


class PixelAccuracySums(ConfusionSums):
    def value(self, sums: dict[str, Tensor]) -> float:
        if "confusion" not in sums:
            return math.nan
        return accuracy_from_confusion(sums["confusion"])


def iou_from_confusion(confusion: Tensor) -> float:
    """Mean IoU over the classes present (a non-empty union) of a confusion matrix."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if bool(present.any()) else math.nan


def accuracy_from_confusion(confusion: Tensor) -> float:
    """Share of the confusion matrix's pixels on its diagonal."""
    conf = confusion.double()
    total = float(conf.sum())
    return float(conf.diag().sum()) / total if total else math.nan


@metric("miou", "max", ConfusionSums)
def miou(output: Tensor, target: Tensor) -> float:
    """Mean intersection over union over the classes present in target or prediction."""
    return iou_from_confusion(confusion_matrix(output, target))


@metric("pixel_accuracy", "max", PixelAccuracySums)
def pixel_accuracy(output: Tensor, target: Tensor) -> float:
    """Share of labelled pixels whose argmax class is the target class."""
    return accuracy_from_confusion(confusion_matrix(output, target))


# --------------------------------------------------------------------------- depth


@LOSSES.register("depth_l1")
def depth_l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean |d̂ − d| over the pixels whose target depth is finite and > 0."""
    out = output.squeeze(1) if output.dim() == target.dim() + 1 else output
    _fit(out, target, tuple(target.shape), "depth_l1")
    keep = torch.isfinite(target) & (target > 0)
    if not bool(keep.any()):
        return empty_loss(output)
    return F.l1_loss(out.float()[keep], target.float()[keep])


def depth_pair(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted and true depth at the valid pixels (target finite and > 0), as float64."""
    out = output
    if out.dim() == target.dim() + 1 and out.shape[1] == 1:
        out = out.squeeze(1)
    if tuple(out.shape) != tuple(target.shape):
        raise TaskDataError(
            f"depth: output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected (N, 1, H, W) for a (N, H, W) target)"
        )
    tgt = target.double()
    keep = torch.isfinite(tgt) & (tgt > 0)
    return out.double()[keep], tgt[keep]


def _mean(sums: dict[str, Tensor], key: str) -> float:
    if "count" not in sums or int(sums["count"]) == 0:
        return math.nan
    return float(sums[key]) / int(sums["count"])


class DepthErrorSums(Sums):
    """``depth_abs_err`` batch by batch (``relative``: ``depth_rel_err``)."""

    relative = False

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        pred, tgt = depth_pair(output, target)
        error = (pred - tgt).abs() / tgt if self.relative else (pred - tgt).abs()
        return {"error": error.sum(), "count": torch.tensor(tgt.numel())}

    def value(self, sums: dict[str, Tensor]) -> float:
        return _mean(sums, "error")


class DepthRelativeSums(DepthErrorSums):
    relative = True


@metric("depth_abs_err", "min", DepthErrorSums)
def depth_abs_err(output: Tensor, target: Tensor) -> float:
    """Mean absolute depth error |d̂ − d| over valid pixels."""
    pred, tgt = depth_pair(output, target)
    return float((pred - tgt).abs().mean()) if tgt.numel() else math.nan


@metric("depth_rel_err", "min", DepthRelativeSums)
def depth_rel_err(output: Tensor, target: Tensor) -> float:
    """Mean relative depth error |d̂ − d| / d over valid pixels."""
    pred, tgt = depth_pair(output, target)
    return float(((pred - tgt).abs() / tgt).mean()) if tgt.numel() else math.nan


# --------------------------------------------------------------------------- surface normals


def normals_valid(target: Tensor) -> Tensor:
    """Mask ``(N, H, W)`` of pixels whose target normal is finite and non-zero."""
    return torch.isfinite(target).all(dim=1) & (target.abs().sum(dim=1) > 0)


@LOSSES.register("normal_cosine")
def normal_cosine(output: Tensor, target: Tensor) -> Tensor:
    """Mean of 1 − cos(n̂, n) over pixels with a finite non-zero target normal.

    Both vectors are L2-normalised over dim 1, so the loss lies in [0, 2].
    """
    _fit(output, target, tuple(target.shape), "normal_cosine")
    if output.dim() < 2 or output.shape[1] != 3:
        raise TaskDataError(
            f"loss 'normal_cosine': output shape {tuple(output.shape)} has "
            f"{output.shape[1] if output.dim() > 1 else 0} channels, expected 3 (x, y, z)"
        )
    keep = normals_valid(target)
    if not bool(keep.any()):
        return empty_loss(output)
    pred = F.normalize(output.float(), dim=1)
    tgt = F.normalize(torch.nan_to_num(target.float()), dim=1)
    cos = (pred * tgt).sum(dim=1)
    return (1.0 - cos[keep]).mean()


def _check_normals(output: Tensor, target: Tensor) -> None:
    if tuple(output.shape) != tuple(target.shape) or output.dim() < 2 or output.shape[1] != 3:
        raise TaskDataError(
            f"surface normals: output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (both must be (N, 3, H, W))"
        )


def normal_angles(output: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between predicted and true normals at the valid pixels (1-D)."""
    _check_normals(output, target)
    keep = normals_valid(target)
    pred = F.normalize(output.double(), dim=1)
    tgt = F.normalize(torch.nan_to_num(target.double()), dim=1)
    cos = (pred * tgt).sum(dim=1)[keep].clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


class AngleSums(Sums):
    """``normal_mean_angle`` batch by batch: the sum and count of angular errors."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        angles = normal_angles(output, target)
        return {"angle": angles.sum(), "count": torch.tensor(angles.numel())}

    def value(self, sums: dict[str, Tensor]) -> float:
        return _mean(sums, "angle")


class WithinSums(Sums):
    """``normal_within_*`` batch by batch: pixels below the threshold, and all valid pixels."""

    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = degrees

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        angles = normal_angles(output, target)
        return {"below": (angles < self.degrees).sum(), "count": torch.tensor(angles.numel())}

    def value(self, sums: dict[str, Tensor]) -> float:
        return _mean(sums, "below")


class KeptAngles(Accumulator):
    """``normal_median_angle``: a median needs every value, so this keeps the angular error
    of each valid pixel (one float64 per pixel, not the outputs and targets)."""

    def __init__(self) -> None:
        self.angles: list[Tensor] = []

    def update(self, output: Tensor, target: Tensor) -> None:
        self.angles.append(normal_angles(output, target))

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, KeptAngles)
        self.angles += other.angles

    def compute(self) -> float:
        return median(torch.cat(self.angles)) if self.angles else math.nan


def median(values: Tensor) -> float:
    """The median of a 1-D tensor (the mean of the two middle values for an even count)."""
    n = values.numel()
    if n == 0:
        return math.nan
    lower = values.kthvalue((n + 1) // 2).values  # kthvalue, unlike quantile, has no size cap
    upper = values.kthvalue(n // 2 + 1).values
    return float((lower + upper) / 2)


@metric("normal_mean_angle", "min", AngleSums)
def normal_mean_angle(output: Tensor, target: Tensor) -> float:
    """Mean angular error in degrees."""
    angles = normal_angles(output, target)
    return float(angles.mean()) if angles.numel() else math.nan


@metric("normal_median_angle", "min", KeptAngles)
def normal_median_angle(output: Tensor, target: Tensor) -> float:
    """Median angular error in degrees (the mean of the two middle values for an even count).

    A median needs every value: streamed, it keeps each valid pixel's angle (a third of the
    outputs' size in float64), not the outputs and targets.
    """
    return median(normal_angles(output, target))


def within(output: Tensor, target: Tensor, degrees: float) -> float:
    """Share of valid pixels whose angular error is below ``degrees``."""
    angles = normal_angles(output, target)
    return float((angles < degrees).double().mean()) if angles.numel() else math.nan


@metric("normal_within_11_25", "max", partial(WithinSums, 11.25))
def normal_within_11_25(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 11.25°."""
    return within(output, target, 11.25)


@metric("normal_within_22_5", "max", partial(WithinSums, 22.5))
def normal_within_22_5(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 22.5°."""
    return within(output, target, 22.5)


@metric("normal_within_30", "max", partial(WithinSums, 30))
def normal_within_30(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 30°."""
    return within(output, target, 30.0)


__all__ = [
    "DEPTH",
    "NORMALS",
    "SEGMENTATION",
    "SEGMENTATION_IGNORE",
    "AngleSums",
    "ConfusionSums",
    "DenseKind",
    "DepthErrorSums",
    "DepthRelativeSums",
    "KeptAngles",
    "PixelAccuracySums",
    "WithinSums",
    "accuracy_from_confusion",
    "confusion_matrix",
    "depth_abs_err",
    "depth_l1",
    "depth_pair",
    "depth_rel_err",
    "iou_from_confusion",
    "median",
    "miou",
    "normal_angles",
    "normal_cosine",
    "normal_mean_angle",
    "normal_median_angle",
    "normal_within_11_25",
    "normal_within_22_5",
    "normal_within_30",
    "normals_valid",
    "pixel_accuracy",
    "segmentation_cross_entropy",
    "segmentation_valid",
    "within",
]
