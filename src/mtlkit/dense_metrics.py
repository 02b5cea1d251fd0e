"""Metrics of dense (per-pixel) tasks: semantic segmentation, depth and surface normals.

These are the metrics of the NYUv2 / Cityscapes multi-task benchmarks as used since
Liu, Johns & Davison, 2019, "End-to-End Multi-Task Learning with Attention", CVPR (MTAN), and
Eigen & Fergus, 2015, "Predicting Depth, Surface Normals and Semantic Labels with a Common
Multi-Scale Convolutional Architecture", ICCV. Every metric pools all valid pixels of the
split (it is not a mean of per-image or per-batch values):

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

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.losses import IGNORE_INDEX
from mtlkit.metrics import metric

SEGMENTATION_IGNORE: tuple[int, ...] = (IGNORE_INDEX, -1, 255)
"""Segmentation labels that mark a pixel as unlabelled."""


# --------------------------------------------------------------------------- segmentation


def segmentation_valid(target: Tensor) -> Tensor:
    """Boolean mask of labelled pixels (target not 255, −1 or −100)."""
    keep = torch.ones_like(target, dtype=torch.bool)
    for value in SEGMENTATION_IGNORE:
        keep &= target != value
    return keep


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


@metric("miou", "max")
def miou(output: Tensor, target: Tensor) -> float:
    """Mean intersection over union over the classes present in target or prediction."""
    conf = confusion_matrix(output, target).double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if bool(present.any()) else math.nan


@metric("pixel_accuracy", "max")
def pixel_accuracy(output: Tensor, target: Tensor) -> float:
    """Share of labelled pixels whose argmax class is the target class."""
    conf = confusion_matrix(output, target).double()
    total = float(conf.sum())
    return float(conf.diag().sum()) / total if total else math.nan


# --------------------------------------------------------------------------- depth


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


@metric("depth_abs_err", "min")
def depth_abs_err(output: Tensor, target: Tensor) -> float:
    """Mean absolute depth error |d̂ − d| over valid pixels."""
    pred, tgt = depth_pair(output, target)
    return float((pred - tgt).abs().mean()) if tgt.numel() else math.nan


@metric("depth_rel_err", "min")
def depth_rel_err(output: Tensor, target: Tensor) -> float:
    """Mean relative depth error |d̂ − d| / d over valid pixels."""
    pred, tgt = depth_pair(output, target)
    return float(((pred - tgt).abs() / tgt).mean()) if tgt.numel() else math.nan


# --------------------------------------------------------------------------- surface normals


def normals_valid(target: Tensor) -> Tensor:
    """Mask ``(N, H, W)`` of pixels whose target normal is finite and non-zero."""
    return torch.isfinite(target).all(dim=1) & (target.abs().sum(dim=1) > 0)


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


@metric("normal_mean_angle", "min")
def normal_mean_angle(output: Tensor, target: Tensor) -> float:
    """Mean angular error in degrees."""
    angles = normal_angles(output, target)
    return float(angles.mean()) if angles.numel() else math.nan


@metric("normal_median_angle", "min")
def normal_median_angle(output: Tensor, target: Tensor) -> float:
    """Median angular error in degrees (the mean of the two middle values for an even count)."""
    angles = normal_angles(output, target)
    n = angles.numel()
    if n == 0:
        return math.nan
    lower = angles.kthvalue((n + 1) // 2).values  # kthvalue, unlike quantile, has no size cap
    upper = angles.kthvalue(n // 2 + 1).values
    return float((lower + upper) / 2)


def within(output: Tensor, target: Tensor, degrees: float) -> float:
    """Share of valid pixels whose angular error is below ``degrees``."""
    angles = normal_angles(output, target)
    return float((angles < degrees).double().mean()) if angles.numel() else math.nan


@metric("normal_within_11_25", "max")
def normal_within_11_25(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 11.25°."""
    return within(output, target, 11.25)


@metric("normal_within_22_5", "max")
def normal_within_22_5(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 22.5°."""
    return within(output, target, 22.5)


@metric("normal_within_30", "max")
def normal_within_30(output: Tensor, target: Tensor) -> float:
    """Share of valid pixels with an angular error below 30°."""
    return within(output, target, 30.0)


__all__ = [
    "SEGMENTATION_IGNORE",
    "confusion_matrix",
    "depth_abs_err",
    "depth_pair",
    "depth_rel_err",
    "miou",
    "normal_angles",
    "normal_mean_angle",
    "normal_median_angle",
    "normal_within_11_25",
    "normal_within_22_5",
    "normal_within_30",
    "normals_valid",
    "pixel_accuracy",
    "segmentation_valid",
    "within",
]
