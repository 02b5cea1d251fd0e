"""Loss balancing: how the task losses become one update.

``get(name, **hyperparameters)`` builds a method; every method has
``backward(losses, model)`` and returns a :class:`StepRecord`. See :mod:`mtlkit.weighting.base`
for the interface and the scale convention.
"""

from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StepRecord, Weighting, available, get

# loss-based methods (one module each)
from mtlkit.weighting.ew import EW
from mtlkit.weighting.static import Static

# gradient-based methods (one module each)

__all__ = [
    "EW",
    "WEIGHTINGS",
    "LossWeighting",
    "Static",
    "StepRecord",
    "Weighting",
    "available",
    "get",
]
