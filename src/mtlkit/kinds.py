"""Task kinds for token sequences and dense maps, with their standard losses.

Importing this module registers, next to the built-in kinds of :mod:`mtlkit.tasks`:

- ``tagging``: per-token classes; output ``(B, L, C)``, target ``(B, L)``; loss
  ``token_cross_entropy``; metrics ``token_accuracy``.
- ``bio_tagging``: the same for BIO entity tags; metrics ``entity_f1``, ``token_accuracy``.
- ``segmentation``: output ``(B, C, H, W)``, target ``(B, H, W)``; loss
  ``segmentation_cross_entropy``; metrics ``miou``, ``pixel_accuracy``.
- ``depth``: output ``(B, 1, H, W)``, target ``(B, H, W)`` or ``(B, 1, H, W)``; loss
  ``depth_l1``; metrics ``depth_abs_err``, ``depth_rel_err``.
- ``normals`` (``num_outputs=3``): output and target ``(B, 3, H, W)``; loss ``normal_cosine``;
  metrics ``normal_mean_angle``, ``normal_median_angle``, ``normal_within_11_25``,
  ``normal_within_22_5``, ``normal_within_30``.

Token targets use ``-100`` for padding and ignored pieces; segmentation targets also ignore
255 and −1; depth ignores pixels whose target is not finite and > 0; normals ignore pixels
whose target is zero or not finite. A batch with nothing valid has an exact zero loss that
still depends on the output (so backward runs and sends zero gradient), as in
:mod:`mtlkit.losses`. The dense losses are those of the MTAN benchmark (Liu, Johns & Davison,
2019, "End-to-End Multi-Task Learning with Attention", CVPR): pixel-wise cross-entropy, L1 on
valid depth, and 1 − cosine similarity for normals.

For ``bio_tagging`` the class indices are read as CoNLL-2003 tags (O, B-1, I-1, B-2, ...)
unless :func:`mtlkit.tagging_metrics.bind_labels` gives the tag names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import mtlkit.tagging_metrics  # noqa: F401  (registers the tagging metrics)
from mtlkit.dense_metrics import SEGMENTATION_IGNORE, normals_valid, segmentation_valid
from mtlkit.errors import TaskDataError
from mtlkit.losses import IGNORE_INDEX, LOSSES
from mtlkit.tasks import TASK_KINDS, TaskKind


@dataclass(frozen=True)
class TokenKind(TaskKind):
    """A per-token classification kind: outputs ``(B, L, C)`` for targets ``(B, L)``.

    Token encoders keep the sequence in dim 1 and features last, so the class dimension of
    the output is the last one, not dim 1 as for images.
    """

    def expected_output_shape(self, target: Tensor, num_outputs: int) -> tuple[int, ...]:
        return (*target.shape, num_outputs)


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


def _empty(output: Tensor) -> Tensor:
    return output.sum() * 0.0


def _fit(output: Tensor, target: Tensor, expected: tuple[int, ...], loss: str) -> None:
    if tuple(output.shape) != tuple(expected):
        raise TaskDataError(
            f"loss '{loss}': output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected output {tuple(expected)})"
        )


# --------------------------------------------------------------------------- losses


@LOSSES.register("token_cross_entropy")
def token_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the last dim of ``(B, L, C)`` logits, mean over tokens ≠ -100."""
    _fit(output, target, (*target.shape, output.shape[-1]), "token_cross_entropy")
    if not bool((target != IGNORE_INDEX).any()):
        return _empty(output)
    return F.cross_entropy(
        output.float().reshape(-1, output.shape[-1]),
        target.long().reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


@LOSSES.register("segmentation_cross_entropy")
def segmentation_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy over dim 1, mean over pixels not labelled 255, −1 or −100."""
    _fit(output, target, (target.shape[0], output.shape[1], *target.shape[1:]), "segmentation")
    keep = segmentation_valid(target)
    if not bool(keep.any()):
        return _empty(output)
    labels = torch.where(keep, target.long(), torch.full_like(target.long(), IGNORE_INDEX))
    return F.cross_entropy(output.float(), labels, ignore_index=IGNORE_INDEX)


@LOSSES.register("depth_l1")
def depth_l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean |d̂ − d| over the pixels whose target depth is finite and > 0."""
    out = output.squeeze(1) if output.dim() == target.dim() + 1 else output
    _fit(out, target, tuple(target.shape), "depth_l1")
    keep = torch.isfinite(target) & (target > 0)
    if not bool(keep.any()):
        return _empty(output)
    return F.l1_loss(out.float()[keep], target.float()[keep])


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
        return _empty(output)
    pred = F.normalize(output.float(), dim=1)
    tgt = F.normalize(torch.nan_to_num(target.float()), dim=1)
    cos = (pred * tgt).sum(dim=1)
    return (1.0 - cos[keep]).mean()


# --------------------------------------------------------------------------- kinds

TAGGING = TokenKind("tagging", "token_cross_entropy", ("token_accuracy",), True, True)
BIO_TAGGING = TokenKind(
    "bio_tagging", "token_cross_entropy", ("entity_f1", "token_accuracy"), True, True
)
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

for _kind in (TAGGING, BIO_TAGGING, SEGMENTATION, DEPTH, NORMALS):
    TASK_KINDS.register(_kind.name, _kind)

__all__ = [
    "BIO_TAGGING",
    "DEPTH",
    "NORMALS",
    "SEGMENTATION",
    "TAGGING",
    "DenseKind",
    "TokenKind",
    "depth_l1",
    "normal_cosine",
    "segmentation_cross_entropy",
    "token_cross_entropy",
]
