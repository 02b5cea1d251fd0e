"""Loss balancing: how the task losses become one update.

``get(name, **hyperparameters)`` builds a method; every method has
``backward(losses, model)`` and returns a :class:`StepRecord`. See :mod:`mtlkit.weighting.base`
for the interface and the scale convention.
"""

from mtlkit.weighting.base import (
    WEIGHTINGS,
    LossWeighting,
    MethodParametersWarning,
    StateField,
    StepContext,
    StepRecord,
    Weighting,
    Wrapper,
    available,
    for_tasks,
    get,
)

# loss-based methods (one module each)
from mtlkit.weighting.ew import EW
from mtlkit.weighting.static import Static

# ---- loss-based methods added by the loss-methods work (keep one import per line)
from mtlkit.weighting.db_mtl import DBMTL
from mtlkit.weighting.dwa import DWA
from mtlkit.weighting.excess_mtl import ExcessMTL
from mtlkit.weighting.famo import FAMO
from mtlkit.weighting.gls import GLS
from mtlkit.weighting.imtl_l import IMTLL
from mtlkit.weighting.rlw import RLW
from mtlkit.weighting.si import SI
from mtlkit.weighting.stch import STCH
from mtlkit.weighting.uw import UW

# ---- gradient-based base and engine
from mtlkit.weighting.gradient import GradientWeighting, GramianWeighting, JacobianAggregator
from mtlkit.weighting.compose import Composed, build, compose
from mtlkit.weighting.subsample import TaskSubsample, subsample

# ---- gradient methods defined by optimisation problems (solvers)
from mtlkit.weighting.cagrad import CAGrad
from mtlkit.weighting.dualproj import DualProj
from mtlkit.weighting.fairgrad import FairGrad
from mtlkit.weighting.imtl_g import IMTLG
from mtlkit.weighting.mgda import MGDA
from mtlkit.weighting.nash_mtl import NashMTL
from mtlkit.weighting.upgrad import UPGrad

# ---- gradient methods by projection / manipulation
from mtlkit.weighting.aligned_mtl import AlignedMTL
from mtlkit.weighting.config import ConFIG
from mtlkit.weighting.graddrop import GradDrop
from mtlkit.weighting.gradnorm import GradNorm
from mtlkit.weighting.gradvac import GradVac
from mtlkit.weighting.moco import MoCo
from mtlkit.weighting.pcgrad import PCGrad

__all__ = [
    "CAGrad",
    "DualProj",
    "FairGrad",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "UPGrad",
    "AlignedMTL",
    "ConFIG",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "MoCo",
    "PCGrad",
    "DBMTL",
    "DWA",
    "ExcessMTL",
    "FAMO",
    "GLS",
    "IMTLL",
    "RLW",
    "SI",
    "STCH",
    "UW",
    "EW",
    "Composed",
    "build",
    "compose",
    "TaskSubsample",
    "subsample",
    "GradientWeighting",
    "GramianWeighting",
    "JacobianAggregator",
    "WEIGHTINGS",
    "LossWeighting",
    "StateField",
    "Static",
    "StepContext",
    "StepRecord",
    "Weighting",
    "Wrapper",
    "MethodParametersWarning",
    "available",
    "for_tasks",
    "get",
]
