"""An anchor-free single-stage detection head (FCOS), its targets, losses, decoding and NMS.

Tian, Shen, Chen & He, 2019, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV.
Every location ``(x, y)`` of the shared feature map (stride ``s``; its centre in the image is
``((j + ½)·s, (i + ½)·s)``) predicts

- K class scores (sigmoid, trained with the focal loss of Lin et al., 2017, "Focal Loss for
  Dense Object Detection", ICCV: α = 0.25, γ = 2, summed and divided by the number of positive
  locations; the class bias starts at −log((1 − π)/π), π = 0.01);
- the distances ``(l, t, r, b)`` from the location to the four sides of its box, as
  ``s · exp(σ·x)`` with a learnable scale σ (trained with the IoU loss −ln IoU of UnitBox,
  Yu et al. 2016, on the positive locations; ``box_loss="giou"`` uses 1 − GIoU instead);
- a centre-ness logit, trained with binary cross-entropy on the positive locations towards
  ``√(min(l,r)/max(l,r) · min(t,b)/max(t,b))``; at test time the class score is multiplied by
  the centre-ness, which ranks off-centre boxes down before NMS.

A location is positive for a ground-truth box when it lies strictly inside it; inside several
boxes, it takes the one of smallest area. Deviations from the paper: one feature level (the
shared encoder's map) rather than an FPN with five, so there are no per-level size ranges
and an object smaller than the stride whose box holds no location centre gets no positive
location (choose a stride no larger than the smallest objects); the towers use ``num_convs``
conv-GroupNorm-ReLU layers of ``channels`` width (the paper: 4 and 256, the defaults); the
distances are predicted in units of the stride (the "normalised regression targets" of the
FCOS code release) rather than in pixels.

**Output layout.** The head returns one tensor ``(B, K + 7, h, w)``: channels ``0..K−1`` the
class logits, ``K..K+3`` the distances ``(l, t, r, b)`` in pixels, ``K+4`` the centre-ness
logit, ``K+5, K+6`` the location ``(x, y)`` in pixels (constant, not trained). Carrying the
locations makes the output self-describing, so the loss and the metrics need nothing but
``(output, target)``. **Targets** are ``(B, M, 5)`` float rows ``(x1, y1, x2, y2, class)`` in
pixels, class in ``[0, K)`` and ``−1`` for the padding rows (see
:func:`check_detection_target`).

NMS uses ``torchvision.ops`` when torchvision is installed and :func:`nms_torch` (the same
greedy algorithm, in pure torch) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError

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
        return ops.nms(boxes.float(), scores.float(), float(iou_threshold))
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


# --------------------------------------------------------------------------- the head


class Scale(nn.Module):
    """A learnable scalar σ that multiplies its input (FCOS's per-level scale)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(width, channels, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(32, channels), channels),
            nn.ReLU(),
        ]
        width = channels
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """FCOS head on one ``(B, in_features, h, w)`` feature map of stride ``stride`` pixels.

    Args:
        in_features: channels of the feature map (the encoder's ``out_features``).
        out_features: the number of object classes K.
        stride: pixels between neighbouring locations (the encoder's ``output_stride``).
        channels: width of the classification and regression towers.
        num_convs: conv-GN-ReLU layers per tower (0: the prediction convs act on the map).
        prior: initial foreground probability π of every class score.

    Returns ``(B, K + 7, h, w)`` laid out as in the module docstring.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int = 8,
        channels: int = 256,
        num_convs: int = 4,
        prior: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("stride", stride, 1),
            ("channels", channels, 1),
            ("num_convs", num_convs, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"head 'fcos': option '{name}' must be an integer ≥ {low}, got {value!r}"
                )
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"head 'fcos': option 'prior' must be in (0, 1), got {prior}")
        width = channels if num_convs else in_features
        self.cls_tower = _tower(in_features, channels, num_convs)
        self.box_tower = _tower(in_features, channels, num_convs)
        self.cls_logits = nn.Conv2d(width, out_features, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scale = Scale(1.0)
        for conv in (self.cls_logits, self.box_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior) / prior))
        self.in_features = in_features
        self.num_classes = out_features
        self.stride = stride

    def locations(self, height: int, width: int, device: torch.device) -> Tensor:
        """``(2, h, w)`` pixel coordinates ``(x, y)`` of the locations' centres."""
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * self.stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y])

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_features:
            raise TaskDataError(
                f"head 'fcos': input shape {tuple(features.shape)} is not a feature map "
                f"(B, {self.in_features}, h, w); use an encoder that keeps the spatial map "
                "(e.g. resnet with pool: false)"
            )
        cls_feat = self.cls_tower(features)
        box_feat = self.box_tower(features)
        logits = self.cls_logits(cls_feat)
        distances = self.stride * torch.exp(self.scale(self.box_pred(box_feat)).clamp(max=10.0))
        centerness = self.centerness(cls_feat)
        b, _, h, w = features.shape
        loc = self.locations(h, w, features.device).to(logits.dtype).expand(b, 2, h, w)
        return torch.cat([logits, distances.to(logits.dtype), centerness, loc], dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, stride={self.stride}"


# --------------------------------------------------------------------------- layout checks


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


# --------------------------------------------------------------------------- targets


def encode_targets(locations: Tensor, boxes: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """FCOS targets of one image.

    Args:
        locations: ``(P, 2)`` location centres ``(x, y)``.
        boxes: ``(M, 4)`` ground-truth boxes ``(x1, y1, x2, y2)`` (no padding rows).
        classes: ``(M,)`` their classes.

    Returns ``labels`` (P,) long, the class of each location's box or −1 for background, and
    ``distances`` (P, 4), the ``(l, t, r, b)`` to that box (zeros for background). A location
    inside several boxes takes the one of smallest area.
    """
    p = locations.shape[0]
    if boxes.shape[0] == 0:
        return (
            torch.full((p,), PADDING_CLASS, dtype=torch.long, device=locations.device),
            torch.zeros(p, 4, dtype=locations.dtype, device=locations.device),
        )
    x, y = locations[:, 0:1], locations[:, 1:2]
    ltrb = torch.stack(
        [x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=-1
    )  # (P, M, 4)
    inside = ltrb.min(dim=-1).values > 0
    area = box_area(boxes)[None, :].expand(p, -1)
    area = torch.where(inside, area, torch.full_like(area, math.inf))
    best_area, best = area.min(dim=1)
    positive = torch.isfinite(best_area)
    labels = torch.where(positive, classes.long()[best], torch.full_like(best, PADDING_CLASS))
    distances = ltrb[torch.arange(p, device=locations.device), best]
    distances = torch.where(positive[:, None], distances, torch.zeros_like(distances))
    return labels, distances


def centerness_target(distances: Tensor) -> Tensor:
    """√(min(l,r)/max(l,r) · min(t,b)/max(t,b)) of ``(..., 4)`` positive distances."""
    lr, tb = distances[..., [0, 2]], distances[..., [1, 3]]
    ratio = (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    return ratio.clamp(min=0).sqrt()


# --------------------------------------------------------------------------- losses


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Element-wise focal loss −α_t (1 − p_t)^γ log p_t on logits (Lin et al. 2017)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def iou_loss(pred: Tensor, target: Tensor, kind: str = "iou") -> Tensor:
    """Per-location box loss of ``(N, 4)`` distances (l, t, r, b) to the same location:
    −ln IoU (``iou``, UnitBox / FCOS) or 1 − GIoU (``giou``, Rezatofighi et al. 2019)."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    w_inter = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    h_inter = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    inter = w_inter.clamp(min=0) * h_inter.clamp(min=0)
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    if kind == "iou":
        return -torch.log(iou)
    w_hull = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])
    h_hull = torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3])
    hull = w_hull * h_hull + 1e-7
    return 1.0 - (iou - (hull - union) / hull)


class FCOSLoss:
    """The FCOS loss of a ``(B, K + 7, h, w)`` output against ``(B, M, 5)`` targets:

        L = 1/N_pos Σ_x focal(p_x, c*_x) + 1/N_pos Σ_{x pos} L_box(t_x, t*_x)
            + 1/N_pos Σ_{x pos} BCE(centre-ness_x, centre-ness*_x)

    with N_pos the number of positive locations in the batch (at least 1). The IoU terms
    add 1 to intersection and union (as UnitBox's implementation does) so that the loss is
    finite for any positive distances. A batch without objects has only the focal term.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        box_loss: str = "iou",
        box_weight: float = 1.0,
        centerness_weight: float = 1.0,
    ) -> None:
        if box_loss not in ("iou", "giou"):
            raise ConfigError(
                f"loss 'fcos': option 'box_loss' must be iou or giou, got {box_loss!r}"
            )
        if not (alpha < 0 or 0 <= alpha <= 1):
            raise ConfigError(f"loss 'fcos': option 'alpha' must be in [0, 1], got {alpha}")
        for name, value in (
            ("gamma", gamma),
            ("box_weight", box_weight),
            ("centerness_weight", centerness_weight),
        ):
            if not value >= 0:
                raise ConfigError(f"loss 'fcos': option '{name}' must be ≥ 0, got {value}")
        self.alpha, self.gamma, self.box_loss = alpha, gamma, box_loss
        self.box_weight, self.centerness_weight = box_weight, centerness_weight

    def targets(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-location labels (B, P) and distances (B, P, 4) for a batch."""
        parts = split_output(output, "loss 'fcos'")
        labels, distances = [], []
        for i in range(target.shape[0]):
            rows = target[i][target[i, :, 4] != PADDING_CLASS]
            lab, dist = encode_targets(parts.locations[i].float(), rows[:, :4].float(), rows[:, 4])
            labels.append(lab)
            distances.append(dist)
        return torch.stack(labels), torch.stack(distances)

    def components(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The three terms of the loss: ``cls``, ``box`` and ``centerness``."""
        parts = split_output(output, "loss 'fcos'")
        k = parts.logits.shape[-1]
        check_detection_target(target, k, "loss 'fcos'")
        if target.shape[0] != output.shape[0]:
            raise TaskDataError(
                f"loss 'fcos': {target.shape[0]} target images for {output.shape[0]} outputs"
            )
        labels, distances = self.targets(output.detach(), target)
        positive = labels >= 0
        n_pos = max(int(positive.sum()), 1)
        one_hot = F.one_hot(labels.clamp(min=0), k).to(parts.logits.dtype)
        one_hot = one_hot * positive[..., None]
        logits = parts.logits.float()
        cls = sigmoid_focal_loss(logits, one_hot.float(), self.alpha, self.gamma).sum() / n_pos
        zero = output.sum() * 0.0
        if not bool(positive.any()):
            return {"cls": cls, "box": zero, "centerness": zero}
        pred = parts.distances[positive].float()
        true = distances[positive].float()
        box = iou_loss(pred, true, self.box_loss).sum() / n_pos
        ctr = (
            F.binary_cross_entropy_with_logits(
                parts.centerness[positive].float(), centerness_target(true), reduction="sum"
            )
            / n_pos
        )
        return {"cls": cls, "box": box, "centerness": ctr}

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        parts = self.components(output, target)
        return (
            parts["cls"]
            + self.box_weight * parts["box"]
            + (self.centerness_weight * parts["centerness"])
        )

    def __repr__(self) -> str:
        return (
            f"FCOSLoss(alpha={self.alpha}, gamma={self.gamma}, box_loss={self.box_loss!r}, "
            f"box_weight={self.box_weight}, centerness_weight={self.centerness_weight})"
        )


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
    "FCOSHead",
    "FCOSLoss",
    "batched_nms",
    "box_area",
    "box_iou",
    "centerness_target",
    "check_detection_target",
    "decode",
    "encode_targets",
    "iou_loss",
    "nms",
    "nms_torch",
    "pad_boxes",
    "sigmoid_focal_loss",
    "split_output",
    "target_boxes",
]
