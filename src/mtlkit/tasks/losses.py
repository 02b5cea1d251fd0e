"""Loss registry: name → ``(output, target) -> scalar`` functions, each ignoring missing labels.

Missing labels are ``-100`` (:data:`IGNORE_INDEX`) for integer targets and NaN for float
targets (an infinite target is bad data, not a missing label, and makes the loss infinite); a
loss over a batch whose labels are all missing is an exact zero that still depends on
``output`` (:func:`empty_loss`, so backward works and sends zero gradient). The losses
themselves are registered by the task family modules that use them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from mtlkit.registry import Registry

IGNORE_INDEX = -100

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")
#: for a registered loss (same name): the same value for a target whose every entry is a valid
#: label, without the mask's operations (the training step knows this from its label check)
LABELLED_LOSSES: Registry[LossFn] = Registry("labelled loss")


def empty_loss(output: Tensor) -> Tensor:
    """The loss of a batch without labels: an exact zero that depends on ``output``."""
    return output.sum() * 0.0


def masked_cross_entropy(output: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy over dim 1, mean over the entries of ``labels`` that are not
    :data:`IGNORE_INDEX`; exactly 0 (still depending on ``output``) when there is none.

    The mean is the sum over the count (at least 1), both on the device: no host
    synchronisation per call (``F.cross_entropy``'s own mean would be 0/0 without labels, and
    testing for that first reads a flag back from the device)."""
    total = F.cross_entropy(output.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


__all__ = [
    "IGNORE_INDEX",
    "LABELLED_LOSSES",
    "LOSSES",
    "LossFn",
    "empty_loss",
    "masked_cross_entropy",
]
