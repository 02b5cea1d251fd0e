"""Task-specific heads: each maps the shared representation to one task's output.

``linear`` and ``mlp`` act on the last dimension, so they serve per-sample representations
``(B, D)`` (classification, multi-label, regression) and per-token ones ``(B, L, D)`` (token
tagging, giving ``(B, L, C)``) alike. ``dense`` maps a feature map ``(B, C, h, w)`` to a
per-pixel prediction (segmentation, depth, surface normals); see :mod:`mtlkit.nn.dense`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.dense import DenseHead
from mtlkit.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("head")
HEADS.register("dense", DenseHead)


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
        if any(h < 1 for h in hidden):
            raise ConfigError(f"head 'mlp': option 'hidden' must be sizes ≥ 1, got {hidden}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, rep: Tensor) -> Tensor:
        return self.net(rep)
