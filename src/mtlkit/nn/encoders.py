"""Shared encoders: they map a batch of inputs to a representation of ``out_features`` values.

Every encoder sets ``out_features`` so heads can be sized without a dry run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """A multi-layer perceptron for tables, with embeddings for categorical columns.

    Inputs are either a float tensor ``(B, in_features)`` or a mapping with ``numeric``
    ``(B, n)`` floats and ``categorical`` ``(B, c)`` integer codes; column j of the categorical
    block is embedded in ``embedding_dim`` values from a table of ``cardinalities[j]`` rows, and
    the embeddings are concatenated to the numeric features. One-hot encoding is not used:
    embeddings scale to high-cardinality columns and are what the MMoE paper's models use.
    """

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
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}.get(activation)
        if act is None:
            raise ConfigError(
                f"encoder 'mlp': unknown activation '{activation}'; available: gelu, relu, tanh"
            )
        self.in_features = in_features
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in cardinalities)
        layers: list[nn.Module] = []
        width = in_features + embedding_dim * len(self.cardinalities)
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        if isinstance(inputs, Mapping):
            parts = [inputs["numeric"].float()] if self.in_features else []
            if self.cardinalities:
                codes = inputs["categorical"]
                if codes.shape[-1] != len(self.cardinalities):
                    raise TaskDataError(
                        f"encoder 'mlp': input 'categorical' has {codes.shape[-1]} columns, "
                        f"expected {len(self.cardinalities)}"
                    )
                parts += [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
            x = torch.cat(parts, dim=1)
        else:
            if self.cardinalities:
                raise TaskDataError(
                    "encoder 'mlp': categorical columns are configured, so inputs must be a "
                    "mapping with 'numeric' and 'categorical' tensors"
                )
            x = inputs.float().flatten(1)
            if x.shape[1] != self.in_features:
                raise TaskDataError(
                    f"encoder 'mlp': input has {x.shape[1]} features, expected {self.in_features}"
                )
        return self.net(x)


@ENCODERS.register("cnn")
class ConvEncoder(nn.Module):
    """A small CNN for small images of any size: conv-BN-ReLU blocks, then global pooling.

    Each entry of ``channels`` is one 3×3 block; blocks after the first halve the resolution
    when ``downsample`` is set. Global average pooling makes the output size independent of the
    input's height and width.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        out_features: int = 128,
        downsample: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or not channels or any(c < 1 for c in channels):
            raise ConfigError(
                f"encoder 'cnn': options 'in_channels' and 'channels' must be ≥ 1, "
                f"got {in_channels} and {channels}"
            )
        blocks: list[nn.Module] = []
        width = in_channels
        for i, c in enumerate(channels):
            stride = 2 if (downsample and i > 0) else 1
            blocks += [
                nn.Conv2d(width, c, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            width = c
        self.in_channels = in_channels
        self.features = nn.Sequential(*blocks)
        self.project = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, out_features), nn.ReLU()
        )
        self.out_features = out_features

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise TaskDataError(
                f"encoder 'cnn': input shape {tuple(images.shape)} is not "
                f"(B, {self.in_channels}, H, W)"
            )
        x = self.features(images.float())
        return self.project(x.mean(dim=(2, 3), keepdim=True))
