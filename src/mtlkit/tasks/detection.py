"""Object detection: the task kind, its loss and its COCO-style metrics mAP@[.5:.95], mAP@.5.

Importing this module registers:

- task kind ``detection``: output ``(B, K + 7, h, w)`` of head ``fcos``, target ``(B, M, 5)``
  rows ``(x1, y1, x2, y2, class)`` padded with class −1 (layout in :mod:`mtlkit.tasks.boxes`);
  loss ``fcos`` (:class:`mtlkit.tasks.fcos.FCOSLoss`); metrics ``map`` (COCO mAP@[.5:.95]) and
  ``map50``.

The head is :class:`mtlkit.nn.detection.FCOSHead`, registered as head ``fcos``. With the
``resnet`` encoder and ``pool: false``, one model carries a ``pooled`` multi-label head, an
``fcos`` detection head and a ``dense`` segmentation head on the same feature map, and any
loss-balancing method trains them together (``examples/vision_mtl.py``).

The metrics follow the protocol of the COCO detection benchmark (Lin et al., 2014, "Microsoft
COCO: Common Objects in Context", ECCV) as its reference evaluator ``COCOeval`` computes it for
boxes over the area range "all" with at most ``max_detections`` = 100 detections per image
and class:

1. per image and class, detections by decreasing score (ties: input order) are matched
   greedily to the still unmatched ground truth of highest IoU ≥ t; crowd boxes
   (``iscrowd``) come after the others, can absorb any number of detections, and use
   IoU = intersection / detection area; a detection matched to a crowd box is ignored;
2. per class and threshold t, all images' detections by decreasing score give the
   precision/recall curve; precision is made monotone (the maximum to its right) and read at
   the 101 recall points 0, 0.01, ..., 1 (0 beyond the highest recall reached); AP is the
   mean of the 101 values;
3. classes without any non-crowd ground truth are left out; mAP is the mean over classes and
   the thresholds t = 0.5, 0.55, ..., 0.95; mAP@.5 uses t = 0.5 alone.

The registered metrics ``map`` and ``map50`` take a detection head's raw output and the
``(N, M, 5)`` targets (:mod:`mtlkit.tasks.boxes`), decode the boxes (FCOS inference) and
apply this protocol. Crowd regions cannot be expressed in that target layout; use
:func:`evaluate_detections` to evaluate with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.tasks._task import TASK_KINDS, TaskKind
from mtlkit.tasks.boxes import (
    EXTRA_CHANNELS,
    check_detection_target,
    decode,
    split_output,
    target_boxes,
)
from mtlkit.tasks.fcos import FCOSLoss
from mtlkit.tasks.losses import LOSSES
from mtlkit.tasks.metrics import Accumulator, metric

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------- the task kind


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
LOSSES.register("fcos", FCOSLoss())


# --------------------------------------------------------------------------- COCO evaluation


@dataclass
class ImageDetections:
    """One image's detections: ``boxes`` (D, 4) ``(x1, y1, x2, y2)``, ``scores``, ``classes``."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass
class ImageTruth:
    """One image's ground truth: ``boxes`` (G, 4), ``classes`` (G,), ``crowd`` (G,) bool."""

    boxes: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes).reshape(-1)
        if self.crowd.size == 0:
            self.crowd = np.zeros(len(self.classes), dtype=bool)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)


def pairwise_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``(D, G)`` IoU of ``(x1, y1, x2, y2)`` boxes; for a crowd ground truth, the intersection
    over the detection's area (COCO's convention)."""
    lt = np.maximum(dets[:, None, :2], gts[None, :, :2])
    rb = np.minimum(dets[:, None, 2:], gts[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=-1)
    area_d = np.clip(dets[:, 2] - dets[:, 0], 0, None) * np.clip(dets[:, 3] - dets[:, 1], 0, None)
    area_g = np.clip(gts[:, 2] - gts[:, 0], 0, None) * np.clip(gts[:, 3] - gts[:, 1], 0, None)
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match(
    ious: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of score-sorted detections to crowd-last ground truth.

    Returns ``matched`` and ``ignored`` (T, D) booleans.
    """
    t_count, (d_count, g_count) = len(thresholds), ious.shape
    matched = np.zeros((t_count, d_count), dtype=bool)
    ignored = np.zeros((t_count, d_count), dtype=bool)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(g_count, dtype=bool)
        for d in range(d_count):
            best_iou, best = min(t, 1 - 1e-10), -1
            for g in range(g_count):
                if taken[g] and not crowd[g]:
                    continue
                if best > -1 and not crowd[best] and crowd[g]:
                    break  # a real match beats any crowd box
                if ious[d, g] < best_iou:
                    continue
                best_iou, best = ious[d, g], g
            if best == -1:
                continue
            matched[ti, d] = True
            ignored[ti, d] = bool(crowd[best])
            taken[best] = True
    return matched, ignored


def _average_precision(
    scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, n_truth: int
) -> np.ndarray:
    """AP per threshold: 101-point interpolated precision of the detections (any order)."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    ap = np.zeros(matched.shape[0])
    for ti in range(matched.shape[0]):
        recall = tp[ti] / n_truth
        precision = tp[ti] / (tp[ti] + fp[ti] + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        reached = idx < len(precision)
        values = np.zeros(len(RECALL_POINTS))
        values[reached] = precision[idx[reached]]
        ap[ti] = float(np.mean(values))
    return ap


def evaluate_detections(
    detections: Sequence[ImageDetections],
    truths: Sequence[ImageTruth],
    iou_thresholds: Sequence[float] = tuple(IOU_THRESHOLDS),
    max_detections: int = 100,
) -> dict[str, float | dict[int, float]]:
    """COCO box evaluation (module docstring) of one list of images.

    Returns ``map`` (mean over classes and thresholds), ``map50`` and ``map75`` (NaN when
    those thresholds are not evaluated), and ``per_class`` (class → AP over the thresholds).
    All are NaN / empty when no class has ground truth.
    """
    if len(detections) != len(truths):
        raise TaskDataError(
            f"evaluate_detections: {len(detections)} images of detections for {len(truths)} "
            "images of ground truth"
        )
    thresholds = np.asarray(iou_thresholds, dtype=float)
    classes = sorted(
        {int(c) for t in truths for c in t.classes}
        | {int(c) for d in detections for c in np.asarray(d.classes).reshape(-1)}
    )
    per_class: dict[int, np.ndarray] = {}
    for c in classes:
        all_scores, all_matched, all_ignored = [], [], []
        n_truth = 0
        for det, truth in zip(detections, truths, strict=True):
            g = np.asarray(truth.classes).reshape(-1) == c
            gt_boxes, crowd = truth.boxes[g], truth.crowd[g]
            order_g = np.argsort(crowd, kind="mergesort")  # crowd boxes last
            gt_boxes, crowd = gt_boxes[order_g], crowd[order_g]
            d = np.asarray(det.classes).reshape(-1) == c
            scores = np.asarray(det.scores, dtype=float).reshape(-1)[d]
            boxes = np.asarray(det.boxes, dtype=float).reshape(-1, 4)[d]
            order_d = np.argsort(-scores, kind="mergesort")[:max_detections]
            scores, boxes = scores[order_d], boxes[order_d]
            n_truth += int((~crowd).sum())
            if len(scores) == 0:
                continue
            ious = pairwise_iou(boxes, gt_boxes, crowd)
            matched, ignored = _match(ious, crowd, thresholds)
            all_scores.append(scores)
            all_matched.append(matched)
            all_ignored.append(ignored)
        if n_truth == 0:
            continue
        if not all_scores:
            per_class[c] = np.zeros(len(thresholds))
            continue
        per_class[c] = _average_precision(
            np.concatenate(all_scores),
            np.concatenate(all_matched, axis=1),
            np.concatenate(all_ignored, axis=1),
            n_truth,
        )
    if not per_class:
        return {"map": math.nan, "map50": math.nan, "map75": math.nan, "per_class": {}}
    table = np.stack(list(per_class.values()))  # (classes, thresholds)

    def at(t: float) -> float:
        hit = np.flatnonzero(np.isclose(thresholds, t))
        return float(table[:, hit[0]].mean()) if hit.size else math.nan

    return {
        "map": float(table.mean()),
        "map50": at(0.5),
        "map75": at(0.75),
        "per_class": {c: float(v.mean()) for c, v in per_class.items()},
    }


def decode_images(output: Tensor, target: Tensor) -> tuple[list[ImageDetections], list[ImageTruth]]:
    """Each image's decoded detections and ground truth, after checking the layouts."""
    parts = split_output(output, "detection metric")
    check_detection_target(target, parts.logits.shape[-1], "detection metric")
    if target.shape[0] != output.shape[0]:
        raise TaskDataError(
            f"detection metric: {target.shape[0]} target images for {output.shape[0]} outputs"
        )
    dets = [
        ImageDetections(d.boxes.numpy(), d.scores.numpy(), d.classes.numpy())
        for d in decode(output)
    ]
    truths = [ImageTruth(b.numpy(), c.numpy()) for b, c in target_boxes(target)]
    return dets, truths


def evaluate_output(output: Tensor, target: Tensor) -> dict[str, float | dict[int, float]]:
    """Decode a detection head's output and evaluate it against ``(N, M, 5)`` targets."""
    return evaluate_detections(*decode_images(output, target))


class KeptDetections(Accumulator):
    """``map`` / ``map50`` batch by batch: COCO matching ranks detections over the whole
    split, so this keeps each image's decoded detections (at most 100) and ground-truth
    boxes, not the head's dense output."""

    key = "map"

    def __init__(self) -> None:
        self.detections: list[ImageDetections] = []
        self.truths: list[ImageTruth] = []

    def update(self, output: Tensor, target: Tensor) -> None:
        dets, truths = decode_images(output, target)
        self.detections += dets
        self.truths += truths

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, KeptDetections)
        self.detections += other.detections
        self.truths += other.truths

    def compute(self) -> float:
        if not self.truths:
            return math.nan
        return float(evaluate_detections(self.detections, self.truths)[self.key])  # type: ignore[arg-type]


class KeptDetections50(KeptDetections):
    key = "map50"


@metric("map", "max", KeptDetections)
def mean_average_precision(output: Tensor, target: Tensor) -> float:
    """COCO mAP@[.5:.95] of decoded detections."""
    return float(evaluate_output(output, target)["map"])  # type: ignore[arg-type]


@metric("map50", "max", KeptDetections50)
def mean_average_precision_50(output: Tensor, target: Tensor) -> float:
    """COCO mAP@.5 (PASCAL-style IoU threshold, COCO's 101-point interpolation)."""
    return float(evaluate_output(output, target)["map50"])  # type: ignore[arg-type]


__all__ = [
    "DETECTION",
    "IOU_THRESHOLDS",
    "RECALL_POINTS",
    "DetectionKind",
    "ImageDetections",
    "ImageTruth",
    "KeptDetections",
    "KeptDetections50",
    "decode_images",
    "evaluate_detections",
    "evaluate_output",
    "mean_average_precision",
    "mean_average_precision_50",
    "pairwise_iou",
]
