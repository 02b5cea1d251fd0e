"""Dense (per-pixel) heads: a feature map ``(B, C, h, w)`` in, a prediction map out.

The head is the small convolutional decoder of the dense multi-task benchmarks (as in
Liu, Johns & Davison, 2019, "End-to-End Multi-Task Learning with Attention", CVPR, and
Vandenhende et al., 2021, "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI):
3×3 conv-BN-ReLU blocks, a 1×1 conv to the task's channels (class logits for segmentation,
1 for depth, 3 for surface normals), then bilinear upsampling to the target resolution.
Upsampling the few output channels instead of the wide feature map keeps it cheap.

The output size is, in this order: the ``size`` given to :meth:`DenseHead.forward` (an
architecture that knows the input image passes its ``(H, W)``), else ``out_size``, else the
feature map scaled by ``scale_factor`` (set it to the encoder's ``output_stride`` to get back
the input size of images whose sides are multiples of it), else the feature-map size.
A size that does not fit the target is reported by :meth:`mtlkit.tasks.Task.check`, naming
the task and both shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError


def _size_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ConfigError(f"head 'dense': option '{what}' must be (height, width) ≥ 1, got {value}")
    return int(pair[0]), int(pair[1])


class DenseHead(nn.Module):
    """Conv head for per-pixel prediction on a ``(B, in_features, h, w)`` feature map.

    Args:
        in_features: channels of the feature map (the encoder's ``out_features``).
        out_features: output channels: classes, 1 for depth, 3 for normals.
        hidden: channels of the 3×3 conv-BN-ReLU blocks before the 1×1 output conv
            (empty: the 1×1 conv alone).
        out_size: fixed output ``(H, W)`` (or one int for a square map).
        scale_factor: upsampling factor when neither ``size`` nor ``out_size`` is given.
        dropout: 2-D dropout before the output conv.
        align_corners: passed to bilinear interpolation.

    Returns ``(B, out_features, H, W)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64,),
        out_size: int | Sequence[int] | None = None,
        scale_factor: float | None = None,
        dropout: float = 0.0,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ConfigError(
                f"head 'dense': in_features and out_features must be ≥ 1, "
                f"got {in_features} and {out_features}"
            )
        if any(h < 1 for h in hidden):
            raise ConfigError(f"head 'dense': option 'hidden' must be sizes ≥ 1, got {hidden}")
        if scale_factor is not None and not scale_factor > 0:
            raise ConfigError(
                f"head 'dense': option 'scale_factor' must be > 0, got {scale_factor}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"head 'dense': option 'dropout' must be in [0, 1), got {dropout}")
        self.out_size = _size_pair(out_size, "out_size") if out_size is not None else None
        self.scale_factor = scale_factor
        self.align_corners = align_corners
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Conv2d(width, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU()]
            width = h
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(width, out_features, 1))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, features: Tensor, size: Sequence[int] | None = None) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_features:
            raise TaskDataError(
                f"head 'dense': input shape {tuple(features.shape)} is not a feature map "
                f"(B, {self.in_features}, h, w); use an encoder that keeps the spatial map "
                "(e.g. resnet with pool: false)"
            )
        out = self.net(features)
        target = tuple(size) if size is not None else self.out_size
        if target is not None:
            if tuple(out.shape[-2:]) != tuple(target):
                out = F.interpolate(
                    out, size=target, mode="bilinear", align_corners=self.align_corners
                )
        elif self.scale_factor is not None and self.scale_factor != 1:
            out = F.interpolate(
                out,
                scale_factor=self.scale_factor,
                mode="bilinear",
                align_corners=self.align_corners,
            )
        return out

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, scale_factor={self.scale_factor}"


__all__ = ["DenseHead"]
