"""Multi-task architectures: what is shared between tasks and what each task keeps."""

from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head, build_model
from mtlkit.nn.architectures.hps import HardParameterSharing

__all__ = ["ARCHITECTURES", "HardParameterSharing", "MTLModel", "build_head", "build_model"]
