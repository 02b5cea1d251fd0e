"""Building blocks: encoders (shared), heads (task-specific) and MTL architectures."""

from mtlkit.nn import adapters, lm, resnet, sequence, sets  # noqa: F401  (registration)
from mtlkit.nn.architectures import ARCHITECTURES, MTLModel, build_model
from mtlkit.nn.encoders import ENCODERS
from mtlkit.nn.heads import HEADS

__all__ = ["ARCHITECTURES", "ENCODERS", "HEADS", "MTLModel", "build_model"]
