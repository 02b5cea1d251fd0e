"""Shared encoders: they map a batch of inputs to a representation of ``out_features`` values.

Every encoder sets ``out_features`` so heads can be sized without a dry run.

Stage-wise architectures (cross-stitch, MTAN) need to see an encoder's intermediate features.
An encoder that allows it follows the :class:`StagedEncoder` protocol: its forward pass is
``finish(stage_S(... stage_1(prepare(inputs))))``, where

- ``prepare(inputs)`` checks the inputs and turns them into the first stage's input
  (embeddings of categorical columns, a channel dimension for grey images, ...);
- ``stages()`` are the blocks whose outputs can be mixed or masked, of widths
  ``stage_channels`` (channels of a map, features of a vector);
- ``stage_layout`` says whether stage outputs are ``"vector"`` ``(B, C)`` or ``"map"``
  ``(B, C, H, W)`` tensors;
- ``finish`` is a module that pools and projects the last stage's output to ``out_features``
  values (an identity when the last stage already is the representation).

:class:`MLPEncoder` and :class:`ConvEncoder` follow it; :func:`require_stages` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")

StageLayout = Literal["vector", "map"]


STAGE_MEMBERS = ("stages", "stage_channels", "stage_layout", "prepare", "finish", "out_features")


@runtime_checkable
class StagedEncoder(Protocol):
    """An encoder split into stages (see the module docstring)."""

    out_features: int
    stage_channels: list[int]
    stage_layout: StageLayout
    finish: nn.Module

    def stages(self) -> nn.ModuleList: ...

    def prepare(self, inputs: Any) -> Tensor: ...


def require_stages(encoder: nn.Module, architecture: str) -> StagedEncoder:
    """``encoder`` as a :class:`StagedEncoder`; a ConfigError naming ``architecture`` and the
    encoder when it is not split into stages."""
    if not isinstance(encoder, StagedEncoder):
        missing = [m for m in STAGE_MEMBERS if not hasattr(encoder, m)]
        raise ConfigError(
            f"architecture '{architecture}': encoder {type(encoder).__name__} is not split into "
            f"stages (it lacks {', '.join(missing)}); use a staged encoder such as 'mlp' or 'cnn'"
        )
    if not isinstance(encoder.finish, nn.Module):
        raise ConfigError(
            f"architecture '{architecture}': encoder {type(encoder).__name__}: 'finish' must be "
            "a module (the pooling/projection after the last stage)"
        )
    widths = list(encoder.stage_channels)
    if len(encoder.stages()) != len(widths) or not widths:
        raise ConfigError(
            f"architecture '{architecture}': encoder {type(encoder).__name__} has "
            f"{len(encoder.stages())} stages but {len(widths)} stage widths"
        )
    if encoder.stage_layout not in ("vector", "map"):
        raise ConfigError(
            f"architecture '{architecture}': encoder {type(encoder).__name__} has stage_layout "
            f"'{encoder.stage_layout}'; expected 'vector' or 'map'"
        )
    return encoder


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """A multi-layer perceptron for tables, with embeddings for categorical columns.

    Inputs are either a float tensor ``(B, in_features)`` or a mapping with ``numeric``
    ``(B, n)`` floats and ``categorical`` ``(B, c)`` integer codes; column j of the categorical
    block is embedded in ``embedding_dim`` values from a table of ``cardinalities[j]`` rows, and
    the embeddings are concatenated to the numeric features. One-hot encoding is not used:
    embeddings scale to high-cardinality columns and are what the MMoE paper's models use.

    Staged: each hidden layer (Linear, activation, dropout) is one ``"vector"`` stage.
    """

    stage_layout: StageLayout = "vector"

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        cardinalities: Sequence[int] = (),
        embedding_dim: int = 8,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if in_features < 0 or (in_features == 0 and not cardinalities):
            raise ConfigError(f"encoder 'mlp': option 'in_features' must be ≥ 1, got {in_features}")
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError(f"encoder 'mlp': option 'hidden' must be sizes ≥ 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"encoder 'mlp': option 'dropout' must be in [0, 1), got {dropout}")
        if any(c < 1 for c in cardinalities):
            raise ConfigError(f"encoder 'mlp': 'cardinalities' must be ≥ 1, got {cardinalities}")
        if cardinalities and embedding_dim < 1:
            raise ConfigError(
                f"encoder 'mlp': option 'embedding_dim' must be ≥ 1, got {embedding_dim}"
            )
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}.get(activation)
        if act is None:
            raise ConfigError(
                f"encoder 'mlp': unknown activation '{activation}'; available: gelu, relu, tanh"
            )
        self.in_features = in_features
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in cardinalities)
        blocks: list[nn.Module] = []
        width = in_features + embedding_dim * len(self.cardinalities)
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(width, h), act()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.net = nn.Sequential(*blocks)
        self.finish: nn.Module = nn.Identity()  # the last hidden layer is the representation
        self.stage_channels = [int(h) for h in hidden]
        self.out_features = width

    def stages(self) -> nn.ModuleList:
        """The hidden layers, one stage each."""
        return nn.ModuleList(self.net)

    def prepare(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Check the inputs; concatenate numeric features and categorical embeddings.

        Numeric inputs are cast to the encoder's parameter dtype (float32 unless the model
        was converted, e.g. to float64)."""
        dtype = self.net[0][0].weight.dtype if len(self.net) else torch.float32
        if isinstance(inputs, Mapping):
            parts = [inputs["numeric"].to(dtype)] if self.in_features else []
            if self.cardinalities:
                codes = inputs["categorical"]
                if codes.shape[-1] != len(self.cardinalities):
                    raise TaskDataError(
                        f"encoder 'mlp': input 'categorical' has {codes.shape[-1]} columns, "
                        f"expected {len(self.cardinalities)}"
                    )
                parts += [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
            return torch.cat(parts, dim=1)
        if self.cardinalities:
            raise TaskDataError(
                "encoder 'mlp': categorical columns are configured, so inputs must be a "
                "mapping with 'numeric' and 'categorical' tensors"
            )
        x = inputs.to(dtype).flatten(1)
        if x.shape[1] != self.in_features:
            raise TaskDataError(
                f"encoder 'mlp': input has {x.shape[1]} features, expected {self.in_features}"
            )
        return x

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        return self.finish(self.net(self.prepare(inputs)))


@ENCODERS.register("cnn")
class ConvEncoder(nn.Module):
    """A small CNN for small images of any size: conv-BN-ReLU blocks, then adaptive pooling.

    Each entry of ``channels`` is one 3×3 block; blocks after the first halve the resolution
    when ``downsample`` is set. Adaptive average pooling to a ``pool_size`` grid (global
    pooling by default) makes the output size independent of the input's height and width; a
    grid larger than 1 × 1 keeps coarse positions, which tasks such as "the left digit" need.

    Staged: each conv-BN-ReLU block is one ``"map"`` stage; global pooling and the linear
    projection to ``out_features`` are ``finish``.
    """

    stage_layout: StageLayout = "map"

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        out_features: int = 128,
        downsample: bool = True,
        dropout: float = 0.0,
        pool_size: Sequence[int] = (1, 1),
    ) -> None:
        super().__init__()
        if len(pool_size) != 2 or min(pool_size) < 1:
            raise ConfigError(
                f"encoder 'cnn': option 'pool_size' must be two sizes ≥ 1, got {pool_size}"
            )
        if in_channels < 1 or not channels or any(c < 1 for c in channels):
            raise ConfigError(
                f"encoder 'cnn': options 'in_channels' and 'channels' must be ≥ 1, "
                f"got {in_channels} and {channels}"
            )
        if out_features < 1:
            raise ConfigError(
                f"encoder 'cnn': option 'out_features' must be ≥ 1, got {out_features}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"encoder 'cnn': option 'dropout' must be in [0, 1), got {dropout}")
        blocks: list[nn.Module] = []
        width = in_channels
        for i, c in enumerate(channels):
            stride = 2 if (downsample and i > 0) else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(width, c, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                )
            )
            width = c
        self.in_channels = in_channels
        self.features = nn.Sequential(*blocks)
        self.finish = nn.Sequential(
            nn.AdaptiveAvgPool2d(tuple(pool_size)),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width * pool_size[0] * pool_size[1], out_features),
            nn.ReLU(),
        )
        self.stage_channels = [int(c) for c in channels]
        self.out_features = out_features

    def stages(self) -> nn.ModuleList:
        """The conv-BN-ReLU blocks, one stage each."""
        return nn.ModuleList(self.features)

    def prepare(self, images: Tensor) -> Tensor:
        """Check the images' shape ``(B, C, H, W)`` (``(B, H, W)`` for one channel)."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise TaskDataError(
                f"encoder 'cnn': input shape {tuple(images.shape)} is not "
                f"(B, {self.in_channels}, H, W)"
            )
        return images.float()

    def forward(self, images: Tensor) -> Tensor:
        return self.finish(self.features(self.prepare(images)))
