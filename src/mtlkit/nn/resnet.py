"""A small ResNet for small images of any size.

He, Zhang, Ren & Sun, 2016, "Deep Residual Learning for Image Recognition", CVPR: the
CIFAR-style network of its Section 4.2 — a 3×3 stem convolution, then stages of BasicBlocks
(two 3×3 conv-BN layers and an identity shortcut, y = ReLU(F(x) + x)), the first stage at full
resolution and each later one halving it with a stride-2 first block. Deviations: widths and
blocks per stage are options (the paper uses 16/32/64 channels and 2n blocks per stage), and
a shortcut that changes shape is a 1×1 conv-BN projection (the paper's option B) rather than
zero padding (option A), which is what common re-implementations do.

Stride-2 3×3 convolutions with padding 1 take a side of n pixels to ⌈n/2⌉, so any input of
at least 1×1 works; global average pooling then makes the output size independent of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.encoders import ENCODERS


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a shortcut: y = ReLU(BN(conv(ReLU(BN(conv(x))))) + s(x))."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@ENCODERS.register("resnet")
class ResNetEncoder(nn.Module):
    """Small ResNet encoder for images ``(B, in_channels, H, W)`` (``(B, H, W)`` if 1 channel).

    Args:
        in_channels: image channels.
        widths: channels of each stage; stage i > 0 halves the resolution.
        blocks: BasicBlocks per stage (one int for all stages).
        stem_stride: stride of the stem conv (2 for larger images, to save compute).
        pool: ``True`` returns the global average ``(B, widths[-1])``; ``False`` returns the
            last stage's feature map ``(B, widths[-1], ⌈H/s⌉, ⌈W/s⌉)`` with
            s = :attr:`output_stride`, for dense heads.

    It follows :class:`mtlkit.nn.encoders.StagedEncoder`, so stage-wise architectures (MTAN,
    cross-stitch) can interleave their own modules: :meth:`forward` is
    ``finish(stage_S(... stage_1(prepare(images))))``, where stage 1 includes the stem,
    ``stage_channels`` are the stages' widths, ``stage_layout`` is ``"map"`` and ``finish`` is
    the global average pooling (an identity when ``pool`` is false).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int | Sequence[int] = 2,
        stem_stride: int = 1,
        pool: bool = True,
    ) -> None:
        super().__init__()
        widths = list(widths)
        depth = [blocks] * len(widths) if isinstance(blocks, int) else list(blocks)
        if in_channels < 1:
            raise ConfigError(
                f"encoder 'resnet': option 'in_channels' must be ≥ 1, got {in_channels}"
            )
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(f"encoder 'resnet': option 'widths' must be sizes ≥ 1, got {widths}")
        if len(depth) != len(widths) or any(b < 1 for b in depth):
            raise ConfigError(
                f"encoder 'resnet': option 'blocks' must be ≥ 1 per stage "
                f"({len(widths)} stages), got {blocks}"
            )
        if stem_stride not in (1, 2):
            raise ConfigError(
                f"encoder 'resnet': option 'stem_stride' must be 1 or 2, got {stem_stride}"
            )
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        width = widths[0]
        for i, (w, n) in enumerate(zip(widths, depth, strict=True)):
            layers: list[nn.Module] = [stem] if i == 0 else []
            for j in range(n):
                layers.append(BasicBlock(width, w, stride=2 if (i > 0 and j == 0) else 1))
                width = w
            stages.append(nn.Sequential(*layers))
        self._stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.pool = pool
        self.finish: nn.Module = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if pool else nn.Identity()
        )
        self.stage_layout: Literal["map"] = "map"
        self.stage_channels: list[int] = widths
        self.output_stride: int = stem_stride * 2 ** (len(widths) - 1)
        self.out_features: int = widths[-1]

    def stages(self) -> nn.ModuleList:
        """The stages, in order; stage i outputs ``stage_channels[i]`` channels."""
        return self._stages

    def prepare(self, images: Tensor) -> Tensor:
        """Images as float ``(B, in_channels, H, W)``; a clear error for any other shape."""
        if images.dim() == 3 and self.in_channels == 1:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise TaskDataError(
                f"encoder 'resnet': input shape {tuple(images.shape)} is not "
                f"(B, {self.in_channels}, H, W)"
            )
        return images.float()

    def forward(self, images: Tensor) -> Tensor:
        x = self.prepare(images)
        for stage in self._stages:
            x = stage(x)
        return self.finish(x)


__all__ = ["BasicBlock", "ResNetEncoder"]
