"""Multi-task architectures: what is shared between tasks and what each task keeps.

Registered names: ``hps``, ``mmoe``, ``cgc``, ``ple``, ``dselect_k``, ``cross_stitch``,
``mtan``. Each class docstring says which of its parameters count as shared.
"""

from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head, build_model
from mtlkit.nn.architectures.cgc import CGC, ExtractionLevel, LevelGates
from mtlkit.nn.architectures.cross_stitch import CrossStitch, CrossStitchUnit
from mtlkit.nn.architectures.dselect_k import DSelectGate, DSelectK, smooth_step
from mtlkit.nn.architectures.hps import HardParameterSharing
from mtlkit.nn.architectures.mmoe import MMoE
from mtlkit.nn.architectures.mtan import MTAN, AttentionModule
from mtlkit.nn.architectures.ple import PLE

__all__ = [
    "ARCHITECTURES",
    "CGC",
    "MTAN",
    "PLE",
    "AttentionModule",
    "CrossStitch",
    "CrossStitchUnit",
    "DSelectGate",
    "DSelectK",
    "ExtractionLevel",
    "HardParameterSharing",
    "LevelGates",
    "MMoE",
    "MTLModel",
    "build_head",
    "build_model",
    "smooth_step",
]
