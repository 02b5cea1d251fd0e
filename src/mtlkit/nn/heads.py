"""Task-specific heads: each maps the shared representation to one task's output.

``linear`` and ``mlp`` act on the last dimension, so they serve per-sample representations
``(B, D)`` (classification, multi-label, regression) and per-token ones ``(B, L, D)`` (token
tagging, giving ``(B, L, C)``) alike. ``pooled`` averages a feature map ``(B, C, h, w)`` over
space first, for image-level outputs on an encoder that keeps the map. ``standardized``
predicts a standardised regression target and returns it in its original units.
``dense`` maps a feature map to a per-pixel prediction (segmentation, depth, surface normals;
:mod:`mtlkit.nn.dense`), ``fcos`` to detections (:mod:`mtlkit.nn.detection`), and ``lm_head``
token features to word logits (:mod:`mtlkit.nn.lm`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.dense import DenseHead
from mtlkit.nn.detection import FCOSHead
from mtlkit.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("head")
HEADS.register("dense", DenseHead)
HEADS.register("fcos", FCOSHead)


def tower(
    head: str, in_features: int, out_features: int, hidden: Sequence[int], dropout: float = 0.0
) -> nn.Sequential:
    """Linear-ReLU(-Dropout) blocks of sizes ``hidden``, then a linear output layer; a
    ConfigError naming ``head`` for a size below 1."""
    if any(h < 1 for h in hidden):
        raise ConfigError(f"head '{head}': option 'hidden' must be sizes ≥ 1, got {hidden}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """One linear layer: logits for classification, values for regression."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, rep: Tensor) -> Tensor:
        return self.linear(rep)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """A small tower: Linear-ReLU blocks of sizes ``hidden`` then a linear output layer."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = tower("mlp", in_features, out_features, hidden, dropout)

    def forward(self, rep: Tensor) -> Tensor:
        return self.net(rep)


@HEADS.register("pooled")
class PooledHead(nn.Module):
    """Global average pooling of ``(B, C, h, w)`` (or a ``(B, C)`` vector as is), then
    ``hidden`` Linear-ReLU layers and a linear output layer: image-level logits."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = tower("pooled", in_features, out_features, hidden)
        self.in_features = in_features

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise TaskDataError(
                f"head 'pooled': input shape {tuple(features.shape)} is neither "
                f"(B, {self.in_features}, h, w) nor (B, {self.in_features})"
            )
        return self.net(features)


@HEADS.register("standardized")
class StandardizedHead(nn.Module):
    """A linear (or MLP) head for a standardised regression target: it predicts z and returns
    ``mean + std · z``, so outputs are in the target's original units."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if not bool(torch.all(std_t > 0)):
            raise ConfigError(f"head 'standardized': option 'std' must be > 0, got {std}")
        self.net = tower("standardized", in_features, out_features, hidden)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("std", std_t)

    def forward(self, rep: Tensor) -> Tensor:
        return self.mean + self.std * self.net(rep)


__all__ = ["HEADS", "LinearHead", "MLPHead", "PooledHead", "StandardizedHead"]
