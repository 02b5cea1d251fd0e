"""Loss registry: name → ``(output, target) -> scalar`` functions, each ignoring missing labels.

Missing labels are ``-100`` (:data:`IGNORE_INDEX`) for integer targets and NaN for float
targets (an infinite target is bad data, not a missing label, and makes the loss infinite); a
loss over a batch whose labels are all missing is an exact zero that still depends on
``output`` (:func:`empty_loss`, so backward works and sends zero gradient). The losses
themselves are registered by the task family modules that use them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from mtlkit.registry import Registry

IGNORE_INDEX = -100

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def empty_loss(output: Tensor) -> Tensor:
    """The loss of a batch without labels: an exact zero that depends on ``output``."""
    return output.sum() * 0.0


__all__ = ["IGNORE_INDEX", "LOSSES", "LossFn", "empty_loss"]
