"""Loss balancing: how the task losses become one update.

``get(name, **hyperparameters)`` builds a method; every method has
``backward(losses, model)`` and returns a :class:`StepRecord`. See :mod:`mtlkit.weighting.base`
for the interface and the scale convention.
"""

from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StepRecord, Weighting, available, get

# loss-based methods (one module each)
from mtlkit.weighting.ew import EW
from mtlkit.weighting.static import Static

# ---- loss-based methods added by the loss-methods work (keep one import per line)

# ---- gradient-based base and engine
from mtlkit.weighting.gradient import GradientWeighting, GramianWeighting, JacobianAggregator

# ---- gradient methods defined by optimisation problems (solvers)

# ---- gradient methods by projection / manipulation

__all__ = [
    "EW",
    "GradientWeighting",
    "GramianWeighting",
    "JacobianAggregator",
    "WEIGHTINGS",
    "LossWeighting",
    "Static",
    "StepRecord",
    "Weighting",
    "available",
    "get",
]
