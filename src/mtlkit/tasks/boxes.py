"""Boxes and the detection layout: box maths, NMS, the head's output, targets, decoding.

The detection family (:mod:`mtlkit.tasks.detection`), its loss (:mod:`mtlkit.tasks.fcos`) and
the FCOS head (:mod:`mtlkit.nn.detection`) share these definitions.

**Output layout.** A detection head returns one tensor ``(B, K + 7, h, w)``: channels
``0..K−1`` the class logits, ``K..K+3`` the distances ``(l, t, r, b)`` in pixels from each
location to the four sides of its box, ``K+4`` the centre-ness logit, ``K+5, K+6`` the
location ``(x, y)`` in pixels (constant, not trained). Carrying the locations makes the output
self-describing, so the loss and the metrics need nothing but ``(output, target)``.
**Targets** are ``(B, M, 5)`` float rows ``(x1, y1, x2, y2, class)`` in pixels, class in
``[0, K)`` and ``−1`` for the padding rows (see :func:`check_detection_target`).

:func:`decode` is FCOS inference (Tian, Shen, Chen & He, 2019, "FCOS: Fully Convolutional
One-Stage Object Detection", ICCV): the class score times the centre-ness, then class-wise
NMS. NMS uses ``torchvision.ops`` when torchvision is installed and :func:`nms_torch` (the
same greedy algorithm, in pure torch) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import TaskDataError

#: channels of the detection output besides the K class logits: l, t, r, b, centre-ness, x, y
EXTRA_CHANNELS = 7
PADDING_CLASS = -1


# --------------------------------------------------------------------------- boxes and NMS


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``(N, 4)`` boxes ``(x1, y1, x2, y2)``."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """The ``(N, M)`` intersection-over-union matrix of boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression in pure torch.

    Visit the boxes by decreasing score; keep a box unless a kept box overlaps it with
    IoU > ``iou_threshold``. Returns the kept indices, by decreasing score (the contract of
    ``torchvision.ops.nms``).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    overlap = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= overlap[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def _torchvision_ops() -> Any:
    """``torchvision.ops`` when torchvision is installed, else None."""
    try:
        from torchvision import ops
    except ImportError:
        return None
    return ops


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression: ``torchvision.ops.nms`` when installed, else :func:`nms_torch`."""
    ops = _torchvision_ops()
    if ops is not None:
        kept: Tensor = ops.nms(boxes.float(), scores.float(), float(iou_threshold))
        return kept
    return nms_torch(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different classes never suppress each other.

    Each class's boxes are shifted by a class-specific offset larger than every coordinate,
    so one NMS call handles all classes (the method of ``torchvision.ops.batched_nms``).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class DetectionOutput:
    """A detection output split into its parts, locations flattened: P = h · w.

    ``logits`` (B, P, K), ``distances`` (B, P, 4) = (l, t, r, b), ``centerness`` (B, P),
    ``locations`` (B, P, 2) = (x, y).
    """

    logits: Tensor
    distances: Tensor
    centerness: Tensor
    locations: Tensor

    @property
    def boxes(self) -> Tensor:
        """Predicted boxes (B, P, 4): (x − l, y − t, x + r, y + b)."""
        x, y = self.locations[..., 0], self.locations[..., 1]
        d = self.distances
        return torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], dim=-1)


def split_output(output: Tensor, what: str = "detection") -> DetectionOutput:
    """Split a ``(B, K + 7, h, w)`` detection output into its parts (see the module doc)."""
    if output.dim() != 4 or output.shape[1] < EXTRA_CHANNELS + 1:
        raise TaskDataError(
            f"{what}: output shape {tuple(output.shape)} is not (B, K + {EXTRA_CHANNELS}, h, w) "
            "with K ≥ 1 classes (the layout of head 'fcos')"
        )
    k = output.shape[1] - EXTRA_CHANNELS
    flat = output.flatten(2).transpose(1, 2)  # (B, P, K + 7)
    return DetectionOutput(
        logits=flat[..., :k],
        distances=flat[..., k : k + 4],
        centerness=flat[..., k + 4],
        locations=flat[..., k + 5 : k + 7],
    )


def check_detection_target(target: Tensor, num_classes: int | None, what: str) -> None:
    """Raise :class:`TaskDataError` unless ``target`` is ``(B, M, 5)`` float rows
    ``(x1, y1, x2, y2, class)`` with finite coordinates, ``x2 ≥ x1``, ``y2 ≥ y1`` and class in
    ``[0, num_classes)`` or −1 (padding)."""
    if not isinstance(target, Tensor):
        raise TaskDataError(f"{what}: target is a {type(target).__name__}, not a tensor")
    if target.dim() != 3 or target.shape[-1] != 5:
        raise TaskDataError(
            f"{what}: target shape {tuple(target.shape)} is not (B, M, 5) rows "
            "(x1, y1, x2, y2, class) padded with class −1"
        )
    if not target.is_floating_point():
        raise TaskDataError(f"{what}: target dtype {target.dtype} is not floating point")
    cls = target[..., 4]
    real = cls != PADDING_CLASS
    rows = target[real]
    if not bool(torch.isfinite(rows).all()):
        raise TaskDataError(f"{what}: a target box has a non-finite coordinate or class")
    if rows.numel():
        labels = rows[:, 4]
        if (
            bool((labels != labels.round()).any())
            or int(labels.min()) < 0
            or (num_classes is not None and int(labels.max()) >= num_classes)
        ):
            bad = labels[(labels != labels.round()) | (labels < 0)]
            value = float(bad[0]) if bad.numel() else float(labels.max())
            raise TaskDataError(
                f"{what}: target class {value:g} is not an integer in [0, {num_classes}) "
                "(−1 marks a padding row)"
            )
        if bool(((rows[:, 2] < rows[:, 0]) | (rows[:, 3] < rows[:, 1])).any()):
            raise TaskDataError(f"{what}: a target box has x2 < x1 or y2 < y1 (negative size)")


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Detections:
    """One image's detections: ``boxes`` (D, 4) ``(x1, y1, x2, y2)``, ``scores`` (D,),
    ``classes`` (D,) long, by decreasing score."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor


def decode(
    output: Tensor,
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 1000,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
) -> list[Detections]:
    """Detections of each image of a ``(B, K + 7, h, w)`` output (FCOS inference).

    Score = sigmoid(class logit) · sigmoid(centre-ness); keep (location, class) pairs with
    score > ``score_threshold``, the ``pre_nms_top_k`` best of them, class-wise NMS at
    ``iou_threshold``, then the ``max_detections`` best (the paper's 0.05, 1000, 0.6, 100).
    """
    parts = split_output(output.detach().float(), "decode")
    scores_all = torch.sigmoid(parts.logits) * torch.sigmoid(parts.centerness)[..., None]
    boxes_all = parts.boxes
    k = parts.logits.shape[-1]
    result = []
    for i in range(output.shape[0]):
        scores = scores_all[i].flatten()
        candidates = torch.nonzero(scores > score_threshold).flatten()
        if candidates.numel() > pre_nms_top_k:
            top = torch.topk(scores[candidates], pre_nms_top_k).indices
            candidates = candidates[top]
        loc, cls = candidates // k, candidates % k
        boxes, sc = boxes_all[i][loc], scores[candidates]
        keep = batched_nms(boxes, sc, cls, iou_threshold)[:max_detections]
        result.append(Detections(boxes[keep], sc[keep], cls[keep]))
    return result


def target_boxes(target: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each image's ground-truth ``(boxes (G, 4), classes (G,))`` from ``(B, M, 5)`` rows."""
    out = []
    for rows in target:
        rows = rows[rows[:, 4] != PADDING_CLASS]
        out.append((rows[:, :4].float(), rows[:, 4].long()))
    return out


def pad_boxes(boxes: Sequence[Tensor], classes: Sequence[Tensor], max_boxes: int) -> Tensor:
    """Stack per-image boxes (G_i, 4) and classes (G_i,) into ``(B, max_boxes, 5)`` rows
    padded with class −1 (raises when an image has more than ``max_boxes`` boxes)."""
    out = torch.zeros(len(boxes), max_boxes, 5)
    out[..., 4] = PADDING_CLASS
    for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
        if b.shape[0] > max_boxes:
            raise TaskDataError(f"pad_boxes: image {i} has {b.shape[0]} boxes > {max_boxes}")
        out[i, : b.shape[0], :4] = b
        out[i, : b.shape[0], 4] = c.float()
    return out


__all__ = [
    "EXTRA_CHANNELS",
    "PADDING_CLASS",
    "DetectionOutput",
    "Detections",
    "batched_nms",
    "box_area",
    "box_iou",
    "check_detection_target",
    "decode",
    "nms",
    "nms_torch",
    "pad_boxes",
    "split_output",
    "target_boxes",
]
