"""An anchor-free single-stage detection head (FCOS).

Tian, Shen, Chen & He, 2019, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV.
Every location ``(x, y)`` of the shared feature map (stride ``s``; its centre in the image is
``((j + ½)·s, (i + ½)·s)``) predicts K class scores (the class bias starts at
−log((1 − π)/π), π = 0.01), the distances ``(l, t, r, b)`` to the four sides of its box, as
``s · exp(σ·x)`` with a learnable scale σ, and a centre-ness logit. The output layout, the
targets, decoding and NMS are in :mod:`mtlkit.tasks.boxes`; the training targets and the loss
(registered as ``fcos``) in :mod:`mtlkit.tasks.fcos`.

Deviations from the paper: one feature level (the shared encoder's map) rather than an FPN
with five, so there are no per-level size ranges and an object smaller than the stride whose
box holds no location centre gets no positive location (choose a stride no larger than the
smallest objects); the towers use ``num_convs`` conv-GroupNorm-ReLU layers of ``channels``
width (the paper: 4 and 256, the defaults); the distances are predicted in units of the
stride (the "normalised regression targets" of the FCOS code release) rather than in pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError


class Scale(nn.Module):
    """A learnable scalar σ that multiplies its input (FCOS's per-level scale)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(width, channels, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(32, channels), channels),
            nn.ReLU(),
        ]
        width = channels
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """FCOS head on one ``(B, in_features, h, w)`` feature map of stride ``stride`` pixels.

    Args:
        in_features: channels of the feature map (the encoder's ``out_features``).
        out_features: the number of object classes K.
        stride: pixels between neighbouring locations (the encoder's ``output_stride``).
        channels: width of the classification and regression towers.
        num_convs: conv-GN-ReLU layers per tower (0: the prediction convs act on the map).
        prior: initial foreground probability π of every class score.

    Returns ``(B, K + 7, h, w)`` laid out as in the module docstring.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int = 8,
        channels: int = 256,
        num_convs: int = 4,
        prior: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("stride", stride, 1),
            ("channels", channels, 1),
            ("num_convs", num_convs, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"head 'fcos': option '{name}' must be an integer ≥ {low}, got {value!r}"
                )
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"head 'fcos': option 'prior' must be in (0, 1), got {prior}")
        width = channels if num_convs else in_features
        self.cls_tower = _tower(in_features, channels, num_convs)
        self.box_tower = _tower(in_features, channels, num_convs)
        self.cls_logits = nn.Conv2d(width, out_features, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scale = Scale(1.0)
        for conv in (self.cls_logits, self.box_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior) / prior))
        self.in_features = in_features
        self.num_classes = out_features
        self.stride = stride

    def locations(self, height: int, width: int, device: torch.device) -> Tensor:
        """``(2, h, w)`` pixel coordinates ``(x, y)`` of the locations' centres."""
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * self.stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y])

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_features:
            raise TaskDataError(
                f"head 'fcos': input shape {tuple(features.shape)} is not a feature map "
                f"(B, {self.in_features}, h, w); use an encoder that keeps the spatial map "
                "(e.g. resnet with pool: false)"
            )
        cls_feat = self.cls_tower(features)
        box_feat = self.box_tower(features)
        logits = self.cls_logits(cls_feat)
        distances = self.stride * torch.exp(self.scale(self.box_pred(box_feat)).clamp(max=10.0))
        centerness = self.centerness(cls_feat)
        b, _, h, w = features.shape
        loc = self.locations(h, w, features.device).to(logits.dtype).expand(b, 2, h, w)
        return torch.cat([logits, distances.to(logits.dtype), centerness, loc], dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, stride={self.stride}"


__all__ = ["FCOSHead", "Scale"]
