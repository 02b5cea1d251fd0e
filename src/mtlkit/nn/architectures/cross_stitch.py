"""Cross-stitch networks: one network column per task, mixed after every stage.

Misra, Shrivastava, Gupta, Hebert 2016, "Cross-stitch Networks for Multi-task Learning", CVPR.

Algorithm (paper, eq. 1, generalised from 2 to T tasks): every task t has its own copy (column)
of the encoder; after each stage s the columns' activations x_1..x_T are linearly mixed by a
learned T×T cross-stitch unit α^s::

    x̃_t = Σ_u α^s_tu x_u          (the same α for every feature of the stage)

and x̃_t is the input of column t's next stage. Each column then pools/projects its last mixed
activation and feeds its task's head.

Initialisation: α^s_tt = α_S and α^s_tu = α_D / (T − 1) for u ≠ t, so each row sums to
α_S + α_D; with two tasks this is the paper's (α_S, α_D) initialisation, whose default
(0.9, 0.1) is the paper's. (α_S, α_D) = (1, 0) makes the columns independent at the start.
Every column starts from the same weights (copies of the given encoder), as the paper's columns
all start from one network.

Deviation: the paper multiplies the units' learning rate (by 10³) to speed their training; here
they use the optimiser's learning rate (put :meth:`CrossStitch.stitch_parameters` in a separate
parameter group to reproduce it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.nn.architectures.experts import parameters_of
from mtlkit.nn.encoders import require_stages
from mtlkit.tasks import Task, task_map


class CrossStitchUnit(nn.Module):
    """A T×T mixing matrix α applied across task columns: x̃_t = Σ_u α_tu x_u."""

    def __init__(self, num_tasks: int, alpha_same: float, alpha_diff: float) -> None:
        super().__init__()
        off = alpha_diff / (num_tasks - 1) if num_tasks > 1 else 0.0
        alpha = torch.full((num_tasks, num_tasks), off)
        alpha.fill_diagonal_(alpha_same)
        self.alpha = nn.Parameter(alpha)

    def forward(self, columns: Tensor) -> Tensor:
        """``columns`` ``(T, B, ...)`` → mixed columns of the same shape."""
        return torch.einsum("tu,u...->t...", self.alpha, columns)


@ARCHITECTURES.register("cross_stitch")
class CrossStitch(MTLModel):
    """One copy of a staged encoder per task, joined by a cross-stitch unit after every stage.

    Args:
        encoder: a staged encoder (:class:`mtlkit.nn.encoders.StagedEncoder`); copied per task.
        tasks: the tasks; each gets a column and a head.
        alpha_same: α_S, the initial weight of a column on itself (paper: 0.9).
        alpha_diff: α_D, the initial total weight of a column on the others (paper: 0.1).

    What counts as shared: the cross-stitch units and, in every column, the input preparation
    and all stages: once a unit mixes them, every task's loss reaches every column's stages.
    Task t's own: the final pooling/projection of its column (after the last unit) and its head.
    At an identity initialisation the other tasks' gradients into a column are zero at first,
    but they are not structurally zero, so the columns still count as shared. There is no
    single shared representation.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        alpha_same: float = 0.9,
        alpha_diff: float = 0.1,
    ) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        staged = require_stages(encoder, "cross_stitch")
        for option, value in (("alpha_same", alpha_same), ("alpha_diff", alpha_diff)):
            if not math.isfinite(value):
                raise ConfigError(
                    f"architecture 'cross_stitch': option '{option}' must be finite, got {value}"
                )
        self.task_names = [t.name for t in tasks]
        self.columns = nn.ModuleDict(
            {t.name: encoder if i == 0 else copy.deepcopy(encoder) for i, t in enumerate(tasks)}
        )
        self.units = nn.ModuleList(
            CrossStitchUnit(len(tasks), float(alpha_same), float(alpha_diff))
            for _ in staged.stage_channels
        )
        width = int(staged.out_features)
        self.heads = nn.ModuleDict({t.name: build_head(t, width) for t in tasks})

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        columns = [self.columns[t] for t in self.task_names]
        stages = [column.stages() for column in columns]
        xs = [column.prepare(inputs) for column in columns]
        for s, unit in enumerate(self.units):
            mixed = unit(torch.stack([stages[t][s](x) for t, x in enumerate(xs)]))
            xs = list(mixed.unbind(0))
        return {
            name: self.heads[name](column.finish(x))
            for name, column, x in zip(self.task_names, columns, xs, strict=True)
        }

    def stitch_parameters(self) -> list[nn.Parameter]:
        """The cross-stitch units' α matrices (for a parameter group of their own)."""
        return parameters_of(self.units)

    def shared_parameters(self) -> list[nn.Parameter]:
        owned = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        return [p for p in parameters_of(self) if id(p) not in owned]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(self.columns[task].finish, self.heads[task])

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Every column's last stage and the last cross-stitch unit (for gradient methods with
        jacobian 'last_shared')."""
        last_stages = [column.stages()[-1] for column in self.columns.values()]
        return parameters_of(*last_stages, self.units[-1])
