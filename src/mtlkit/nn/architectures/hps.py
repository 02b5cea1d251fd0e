"""Hard parameter sharing: one shared encoder, one head per task.

Caruana 1997, "Multitask Learning"; the most common MTL architecture. Every encoder parameter
is shared; each head's parameters belong to its task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.tasks import Task, task_map


@ARCHITECTURES.register("hps")
class HardParameterSharing(MTLModel):
    """A shared ``encoder`` (with ``out_features``) and one head per task."""

    def __init__(self, encoder: nn.Module, tasks: Sequence[Task]) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        width = int(encoder.out_features)
        self.heads = nn.ModuleDict({t.name: build_head(t, width) for t in tasks})

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self.forward_with_representation(inputs)[0]

    def forward_with_representation(self, inputs: Any) -> tuple[dict[str, Tensor], Tensor]:
        rep = self.encoder(inputs)
        return {name: head(rep) for name, head in self.heads.items()}, rep

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.heads[task].parameters() if p.requires_grad]
