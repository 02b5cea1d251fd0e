"""Vision tasks on one image backbone: detection and image-level multi-label classification.

Importing this module registers, next to the dense kinds of :mod:`mtlkit.kinds`:

- task kind ``detection``: output ``(B, K + 7, h, w)`` of head ``fcos``, target ``(B, M, 5)``
  rows ``(x1, y1, x2, y2, class)`` padded with class −1; loss ``fcos``; metrics ``map``
  (COCO mAP@[.5:.95]) and ``map50`` (see :mod:`mtlkit.nn.detection` and
  :mod:`mtlkit.detection_metrics`);
- head ``fcos`` (:class:`mtlkit.nn.detection.FCOSHead`) and head ``pooled``
  (:class:`PooledHead`): global average pooling of a feature map, then a linear layer, for
  image-level outputs (``multilabel``, ``classification``) on an encoder that keeps the map;
- metric ``multilabel_map``: the mean over labels of the average precision of the label's
  scores (the multi-label classification metric of PASCAL VOC / COCO, e.g. Everingham et al.,
  2010, "The PASCAL Visual Object Classes (VOC) Challenge", IJCV, non-interpolated form).

With the ``resnet`` encoder and ``pool: false``, one model carries a ``pooled`` multi-label
head, an ``fcos`` detection head and a ``dense`` segmentation head on the same feature map,
and any loss-balancing method trains them together (``examples/vision_mtl.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import mtlkit.detection_metrics  # registers map, map50
import mtlkit.kinds  # noqa: F401  (registers the segmentation kind)
from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.losses import LOSSES
from mtlkit.metrics import metric
from mtlkit.nn.detection import EXTRA_CHANNELS, FCOSHead, FCOSLoss, check_detection_target
from mtlkit.nn.heads import HEADS
from mtlkit.tasks import TASK_KINDS, TaskKind

HEADS.register("fcos", FCOSHead)
LOSSES.register("fcos", FCOSLoss())


@dataclass(frozen=True)
class DetectionKind(TaskKind):
    """Object detection: ``(B, M, 5)`` float box rows in, ``(B, K + 7, h, w)`` out.

    The target layout is checked here (rows of 5, classes in ``[0, K)`` or −1, no negative
    box size), so :meth:`mtlkit.tasks.Task.check` reports bad boxes before any loss runs.
    """

    def output_fits(self, output: Tensor, target: Tensor, num_outputs: int) -> bool:
        """Any ``(B, K + 7, h, w)`` map fits: the boxes do not fix the map size."""
        check_detection_target(target, num_outputs, "detection")
        return (
            output.dim() == 4
            and output.shape[0] == target.shape[0]
            and output.shape[1] == num_outputs + EXTRA_CHANNELS
        )

    def describe_expected(self, target: Tensor, num_outputs: int) -> str:
        return f"({target.shape[0]}, {num_outputs + EXTRA_CHANNELS}, h, w)"


DETECTION = DetectionKind("detection", "fcos", ("map", "map50"), False, False)
TASK_KINDS.register(DETECTION.name, DETECTION)


@HEADS.register("pooled")
class PooledHead(nn.Module):
    """Global average pooling of ``(B, C, h, w)`` (or a ``(B, C)`` vector as is), then
    ``hidden`` Linear-ReLU layers and a linear output layer: image-level logits."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] = ()) -> None:
        super().__init__()
        if any(h < 1 for h in hidden):
            raise ConfigError(f"head 'pooled': option 'hidden' must be sizes ≥ 1, got {hidden}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise TaskDataError(
                f"head 'pooled': input shape {tuple(features.shape)} is neither "
                f"(B, {self.in_features}, h, w) nor (B, {self.in_features})"
            )
        return self.net(features)


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
    """Mean over labels (with at least one positive) of the average precision of the logits."""
    out = output.reshape(target.shape).float()
    keep = torch.isfinite(target.float())
    values = []
    for j in range(target.shape[-1]):
        k = keep[..., j]
        ap = average_precision(out[..., j][k], target[..., j][k].float())
        if not math.isnan(ap):
            values.append(ap)
    return float(np.mean(values)) if values else math.nan


__all__ = ["DETECTION", "DetectionKind", "PooledHead", "average_precision", "multilabel_map"]
