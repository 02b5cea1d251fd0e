"""Loss registry: name → ``(output, target) -> scalar`` functions, each ignoring missing labels.

Missing labels are ``-100`` for integer targets and NaN for float targets (an infinite
target is bad data, not a missing label, and makes the loss infinite); a loss over a batch
whose labels are all missing is an exact zero that still depends on ``output`` (so backward
works and sends zero gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.registry import Registry

IGNORE_INDEX = -100

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def _empty(output: Tensor) -> Tensor:
    return output.sum() * 0.0


@LOSSES.register("cross_entropy")
def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy over dim 1 (works per sample, per token and per pixel)."""
    if not bool((target != IGNORE_INDEX).any()):
        return _empty(output)
    return F.cross_entropy(output.float(), target.long(), ignore_index=IGNORE_INDEX)


def _masked_float(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    out = output.float().reshape(target.shape)
    keep = ~torch.isnan(target)  # NaN marks a missing label; inf is bad data and stays
    return out[keep], target[keep].float()


@LOSSES.register("bce")
def bce(output: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, for binary and multi-label targets in {0, 1}."""
    out, tgt = _masked_float(output, target.float())
    return F.binary_cross_entropy_with_logits(out, tgt) if tgt.numel() else _empty(output)


@LOSSES.register("mse")
def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.mse_loss(out, tgt) if tgt.numel() else _empty(output)


@LOSSES.register("l1")
def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.l1_loss(out, tgt) if tgt.numel() else _empty(output)


@LOSSES.register("smooth_l1")
def smooth_l1(output: Tensor, target: Tensor) -> Tensor:
    """Huber-style smooth L1 (β = 1) over finite targets."""
    out, tgt = _masked_float(output, target)
    return F.smooth_l1_loss(out, tgt) if tgt.numel() else _empty(output)
