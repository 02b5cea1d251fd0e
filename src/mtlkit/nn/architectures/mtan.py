"""Multi-Task Attention Network (MTAN): a shared backbone, soft attention masks per task.

Liu, Johns, Davison 2019, "End-to-End Multi-Task Learning with Attention", CVPR.

Algorithm (paper, section 3.2), shared backbone stages j = 1..S with outputs p^(j), task i::

    a_j^(i) = h_j^(i)(g_j^(i)([p^(j); f^(j)(â_{j-1}^(i))]))     mask in [0, 1] (sigmoid)
    â_j^(i) = a_j^(i) ⊙ p^(j)                                  task i's attended features

with g = 1×1 conv-BN-ReLU, h = 1×1 conv-BN-sigmoid and f = 3×3 conv-BN-ReLU plus pooling to
the next stage's resolution; at j = 1 the input is p^(1) alone. Task i's head reads the
backbone's final pooling/projection of â_S^(i).

Deviations:
- the paper's mask input is u^(j), the output of the first layer inside stage j; stages here are
  opaque blocks, so the mask reads the stage output p^(j) (which it also gates);
- f pools with an adaptive average pool to p^(j)'s size (the paper: max pooling by 2);
- for ``"vector"`` stages (MLP encoders) the masks are feature-wise: g = Linear-ReLU,
  h = Linear-sigmoid, f = Linear-ReLU, without batch normalisation;
- only the encoder half is built (the paper's SegNet decoder attention is left to dense heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.nn.architectures.experts import last_layer, parameters_of
from mtlkit.nn.encoders import StageLayout, require_stages
from mtlkit.tasks import Task, task_map


class AttentionModule(nn.Module):
    """One task's attention at one stage: a mask in [0, 1] of the stage output's shape."""

    def __init__(self, layout: StageLayout, width: int, previous: int | None) -> None:
        super().__init__()
        in_width = width if previous is None else 2 * width
        self.carry: nn.Module | None
        if layout == "vector":
            self.mask = nn.Sequential(
                nn.Linear(in_width, width), nn.ReLU(), nn.Linear(width, width), nn.Sigmoid()
            )
            self.carry = (
                None if previous is None else nn.Sequential(nn.Linear(previous, width), nn.ReLU())
            )
        else:
            self.mask = nn.Sequential(
                nn.Conv2d(in_width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.Sigmoid(),
            )
            self.carry = (
                None
                if previous is None
                else nn.Sequential(
                    nn.Conv2d(previous, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )

    def forward(self, features: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """The attended features a ⊙ p and the mask a, from the stage output p and the task's
        previous attended features (None at the first stage)."""
        if self.carry is None or previous is None:
            mask = self.mask(features)
        else:
            carried = self.carry(previous)
            if carried.dim() == 4 and carried.shape[-2:] != features.shape[-2:]:
                carried = F.adaptive_avg_pool2d(carried, features.shape[-2:])
            mask = self.mask(torch.cat([features, carried], dim=1))
        return mask * features, mask


@ARCHITECTURES.register("mtan")
class MTAN(MTLModel):
    """A shared staged encoder with one attention module per task and stage.

    Args:
        encoder: a staged encoder (:class:`mtlkit.nn.encoders.StagedEncoder`), shared.
        tasks: the tasks; each gets an attention module per stage and a head.

    Masks: for ``"map"`` stages (CNN) the mask of stage j has the stage output's shape
    ``(B, C_j, H_j, W_j)``; for ``"vector"`` stages (MLP) it is ``(B, C_j)`` (feature-wise).
    Values lie in [0, 1] (a sigmoid).

    What counts as shared: the whole encoder — its input preparation, stages and final
    pooling/projection, which every task's attended features pass through. Task i's own: its
    attention modules and its head. There is no single shared representation (each head reads
    its own attended features).
    """

    def __init__(self, encoder: nn.Module, tasks: Sequence[Task]) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        staged = require_stages(encoder, "mtan")
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        widths = [int(w) for w in staged.stage_channels]
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    AttentionModule(staged.stage_layout, w, widths[j - 1] if j else None)
                    for j, w in enumerate(widths)
                )
                for t in tasks
            }
        )
        width = int(staged.out_features)
        self.heads = nn.ModuleDict({t.name: build_head(t, width) for t in tasks})

    def _run(self, inputs: Any) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
        x = self.encoder.prepare(inputs)
        backbone: list[Tensor] = []
        for stage in self.encoder.stages():
            x = stage(x)
            backbone.append(x)
        outputs: dict[str, Tensor] = {}
        masks: dict[str, list[Tensor]] = {}
        for name in self.task_names:
            attended: Tensor | None = None
            masks[name] = []
            for module, features in zip(self.attention[name], backbone, strict=True):
                attended, mask = module(features, attended)
                masks[name].append(mask)
            assert attended is not None
            outputs[name] = self.heads[name](self.encoder.finish(attended))
        return outputs, masks

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self._run(inputs)[0]

    def attention_masks(self, inputs: Any) -> dict[str, list[Tensor]]:
        """Each task's masks, one per stage, of the stage output's shape, values in [0, 1]."""
        return self._run(inputs)[1]

    def shared_parameters(self) -> list[nn.Parameter]:
        return parameters_of(self.encoder)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(self.attention[task], self.heads[task])

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's final projection, or its last stage when ``finish`` has no parameters
        (for gradient methods with jacobian 'last_shared')."""
        return last_layer(self.encoder.finish) or parameters_of(self.encoder.stages()[-1])
