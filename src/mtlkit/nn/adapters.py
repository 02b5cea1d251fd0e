"""Encoders from optional libraries: torchvision ResNets and Hugging Face transformers.

Each needs an extra (``pip install 'mtlkit[vision]'`` or ``'mtlkit[nlp]'``), imported only when
the encoder is built; without it the build raises :class:`mtlkit.errors.MissingExtraError`
naming the extra. Nothing is downloaded at import or by default: torchvision models start
from random weights unless ``weights`` names a torchvision weight set (which torchvision may
download) or ``checkpoint`` a local state dict; a Hugging Face model is built from a local
directory or a config dict, and from the hub only when a model name is passed explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError, require
from mtlkit.nn.encoders import ENCODERS

# --------------------------------------------------------------------------- torchvision

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@ENCODERS.register("torchvision_resnet")
class TorchvisionResNet(nn.Module):
    """A torchvision ResNet (He et al., 2016, "Deep Residual Learning for Image Recognition",
    CVPR) without its classifier, as a shared image encoder.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        weights: a torchvision weight name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or ``None``
            for random initialisation (the default: nothing is downloaded).
        checkpoint: path of a local state dict of the full torchvision model to load.
        in_channels: image channels; other than 3 replaces the stem conv (its pretrained
            weights are then lost).
        pool: ``True`` gives ``(B, out_features)`` after global average pooling; ``False``
            the last stage's map ``(B, out_features, ⌈H/32⌉, ⌈W/32⌉)``.

    It follows :class:`mtlkit.nn.encoders.StagedEncoder`: ``stages()`` gives the stem +
    ``layer1``, then ``layer2`` … ``layer4``; ``stage_channels`` their widths (64·e, 128·e,
    256·e, 512·e with e = 1 for resnet18/34 and 4 otherwise); ``finish`` is the pooling.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        weights: str | None = None,
        checkpoint: str | None = None,
        in_channels: int = 3,
        pool: bool = True,
    ) -> None:
        super().__init__()
        where = "encoder 'torchvision_resnet'"
        if arch not in TORCHVISION_RESNETS:
            raise ConfigError(
                f"{where}: option 'arch' must be one of {', '.join(TORCHVISION_RESNETS)}, "
                f"got {arch!r}"
            )
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise ConfigError(f"{where}: option 'checkpoint' is not a file: {checkpoint}")
        if in_channels < 1:
            raise ConfigError(f"{where}: option 'in_channels' must be ≥ 1, got {in_channels}")
        models = require("torchvision.models", "vision", f"{where}")
        net = getattr(models, arch)(weights=weights)
        if checkpoint is not None:
            net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self._stages = nn.ModuleList(
            [
                nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
                net.layer2,
                net.layer3,
                net.layer4,
            ]
        )
        expansion = int(type(net.layer1[0]).expansion)
        self.stage_channels: list[int] = [64 * expansion * 2**i for i in range(4)]
        self.out_features: int = int(net.fc.in_features)
        self.output_stride = 32
        self.in_channels = in_channels
        self.pool = pool
        self.finish: nn.Module = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if pool else nn.Identity()
        )
        self.stage_layout: Literal["map"] = "map"

    def stages(self) -> nn.ModuleList:
        """The four stages, in order (stage 0 includes the stem)."""
        return self._stages

    def prepare(self, images: Tensor) -> Tensor:
        """Images as float ``(B, in_channels, H, W)``; a clear error for any other shape."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise TaskDataError(
                f"encoder 'torchvision_resnet': input shape {tuple(images.shape)} is not "
                f"(B, {self.in_channels}, H, W)"
            )
        return images.float()

    def forward(self, images: Tensor) -> Tensor:
        x = self.prepare(images)
        for stage in self._stages:
            x = stage(x)
        return self.finish(x)


# --------------------------------------------------------------------------- transformers


@ENCODERS.register("hf_encoder")
class HFEncoder(nn.Module):
    """A Hugging Face ``transformers`` AutoModel as a token encoder: ``(B, L, hidden_size)``.

    Give exactly one of:

    - ``path``: a local directory saved with ``save_pretrained`` (loaded with
      ``local_files_only=True``: never the network);
    - ``config``: a config dict with ``model_type`` (e.g. ``{"model_type": "bert",
      "hidden_size": 64, ...}``), built with random weights;
    - ``model_name``: a hub model id, downloaded by ``transformers`` if not cached.

    Inputs are ``(B, L)`` token ids (padding where the id is the model's ``pad_token_id``, or 0)
    or a mapping with ``tokens`` or ``input_ids`` and optionally ``mask`` or
    ``attention_mask``. Outputs are the last hidden states, zero at padded positions, or their
    mean over real tokens with ``pool="mean"``. ``trainable=False`` freezes the model.
    """

    def __init__(
        self,
        path: str | None = None,
        config: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        pool: Literal["none", "mean"] = "none",
        trainable: bool = True,
    ) -> None:
        super().__init__()
        where = "encoder 'hf_encoder'"
        options = (("path", path), ("config", config), ("model_name", model_name))
        given = [name for name, value in options if value is not None]
        if len(given) != 1:
            raise ConfigError(
                f"{where}: give exactly one of the options 'path', 'config', 'model_name', "
                f"got {', '.join(given) or 'none'}"
            )
        if path is not None and not os.path.isdir(path):
            raise ConfigError(f"{where}: option 'path' is not a local directory: {path}")
        if config is not None and "model_type" not in config:
            raise ConfigError(f"{where}: option 'config' needs a 'model_type' (e.g. 'bert')")
        if pool not in ("none", "mean"):
            raise ConfigError(f"{where}: option 'pool' must be 'none' or 'mean', got {pool!r}")
        transformers = require("transformers", "nlp", where)
        if path is not None:
            self.model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        elif config is not None:
            options = dict(config)
            cfg = transformers.AutoConfig.for_model(options.pop("model_type"), **options)
            self.model = transformers.AutoModel.from_config(cfg)
        else:
            self.model = transformers.AutoModel.from_pretrained(model_name)
        if not trainable:
            self.model.requires_grad_(False)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        self.out_features = int(self.model.config.hidden_size)
        self.pool = pool

    def token_mask(self, inputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Token ids ``(B, L)`` and the boolean mask of real tokens."""
        if isinstance(inputs, Mapping):
            tokens = inputs.get("tokens", inputs.get("input_ids"))
            mask = inputs.get("mask", inputs.get("attention_mask"))
        else:
            tokens, mask = inputs, None
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise TaskDataError(
                "encoder 'hf_encoder': inputs must be (B, L) integer token ids, or a mapping "
                "with 'tokens' or 'input_ids'"
            )
        if mask is None:
            mask = tokens != self.pad_token_id
        if tuple(mask.shape) != tuple(tokens.shape):
            raise TaskDataError(
                f"encoder 'hf_encoder': mask shape {tuple(mask.shape)} does not fit tokens "
                f"{tuple(tokens.shape)}"
            )
        return tokens.long(), mask.bool()

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        tokens, mask = self.token_mask(inputs)
        out = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        out = torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out))
        if self.pool == "mean":
            return out.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(out.dtype)
        return out


__all__ = ["TORCHVISION_RESNETS", "HFEncoder", "TorchvisionResNet", "require"]
