"""The FCOS training targets and loss (Tian, Shen, Chen & He, 2019, "FCOS: Fully
Convolutional One-Stage Object Detection", ICCV).

Every location ``(x, y)`` of a ``(B, K + 7, h, w)`` detection output (layout in
:mod:`mtlkit.tasks.boxes`) predicts

- K class scores (sigmoid, trained with the focal loss of Lin et al., 2017, "Focal Loss for
  Dense Object Detection", ICCV: α = 0.25, γ = 2, summed and divided by the number of positive
  locations);
- the distances ``(l, t, r, b)`` from the location to the four sides of its box (trained with
  the IoU loss −ln IoU of UnitBox, Yu et al. 2016, on the positive locations;
  ``box_loss="giou"`` uses 1 − GIoU instead);
- a centre-ness logit, trained with binary cross-entropy on the positive locations towards
  ``√(min(l,r)/max(l,r) · min(t,b)/max(t,b))``.

A location is positive for a ground-truth box when it lies strictly inside it; inside several
boxes, it takes the one of smallest area. With one feature level (no FPN), there are no
per-level size ranges, and an object smaller than the stride whose box holds no location
centre gets no positive location. The head is :class:`mtlkit.nn.detection.FCOSHead`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks.boxes import PADDING_CLASS, box_area, check_detection_target, split_output

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


__all__ = ["FCOSLoss", "centerness_target", "encode_targets", "iou_loss", "sigmoid_focal_loss"]
