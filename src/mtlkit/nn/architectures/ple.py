"""Progressive Layered Extraction (PLE): stacked CGC levels with shared gates below the top.

Tang, Liu, Zhao, Gong 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys.

Algorithm (paper, eq. 4–5), levels j = 1..N, task k, input x::

    g^{k,0} = g^{s,0} = x
    E_s^j   = shared experts(g^{s,j-1});   E_k^j = task k's experts(g^{k,j-1})
    g^{k,j} = softmax(W_k^j g^{k,j-1}) · [E_k^j, E_s^j]                  (task gate)
    g^{s,j} = softmax(W_s^j g^{s,j-1}) · [E_s^j, E_1^j, .., E_K^j]       (shared gate, j < N)
    y_k     = t^k(g^{k,N})

Deviation: x is the output of the given ``encoder``, a shared bottom the paper does not have;
the towers are the tasks' heads. All levels use the same expert counts and sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.nn.architectures.cgc import ExtractionLevel, LevelGates, check_expert_counts
from mtlkit.nn.architectures.experts import check_count, check_sizes, last_layer, parameters_of
from mtlkit.tasks import Task, task_map


@ARCHITECTURES.register("ple")
class PLE(MTLModel):
    """Progressive Layered Extraction: ``num_levels`` CGC levels, each level but the last with
    a shared gate whose output is the next level's shared experts' input.

    Args:
        encoder: shared encoder (with ``out_features``) whose output feeds the first level.
        tasks: the tasks; each gets experts and a gate per level, and a head (its tower).
        num_levels: N, the number of extraction levels (≥ 1; N = 1 is CGC).
        num_shared_experts: m_s shared experts per level (≥ 1: without them no level
            passes anything from one task to another).
        num_task_experts: m_k experts per task and level (≥ 0); m_s + m_k must be ≥ 1.
        expert_hidden: layer sizes of each expert MLP (Linear-ReLU layers).

    What counts as shared: every parameter that more than one task's loss reaches. In a level
    j < N the shared gate reads *all* the level's experts, task-specific ones included, and
    feeds the shared experts of level j + 1, which every task reads. So:

    - shared: the encoder, all shared experts and shared gates, task k's experts of levels
      j < N, and task k's gates of levels j < N − 1;
    - task k's own: its experts of the top level N, its gates of levels N − 1 and N (the
      gate of level N − 1 feeds only task k's path of level N), and its head.

    Defaults (2 levels, one shared and one task expert of one 64-unit layer) are ours; the
    paper tunes them per data set.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        num_levels: int = 2,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        levels = check_count(num_levels, "ple", "num_levels")
        m_s, m_k = check_expert_counts("ple", num_shared_experts, num_task_experts)
        check_count(m_s, "ple", "num_shared_experts")  # no shared experts: nothing to extract
        hidden = check_sizes(expert_hidden, "ple", "expert_hidden")
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        width = int(encoder.out_features)
        self.levels = nn.ModuleList()
        for j in range(levels):
            last = j == levels - 1
            level = ExtractionLevel(width, self.task_names, m_s, m_k, hidden, shared_gate=not last)
            self.levels.append(level)
            width = level.out_features
        self.heads = nn.ModuleDict({t.name: build_head(t, width) for t in tasks})

    def _run(self, inputs: Any) -> tuple[dict[str, Tensor], list[LevelGates]]:
        x = self.encoder(inputs)
        task_inputs: dict[str, Tensor] = dict.fromkeys(self.task_names, x)
        shared_input: Tensor | None = x
        gates: list[LevelGates] = []
        for level in self.levels:
            assert shared_input is not None
            task_inputs, shared_input, level_gates = level(task_inputs, shared_input)
            gates.append(level_gates)
        return {t: self.heads[t](task_inputs[t]) for t in self.task_names}, gates

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self._run(inputs)[0]

    def gate_weights(self, inputs: Any) -> list[LevelGates]:
        """The gates of every level, bottom first (the top level has no shared gate)."""
        return self._run(inputs)[1]

    def _owned_modules(self, task: str) -> list[nn.Module]:
        top = len(self.levels) - 1
        modules: list[nn.Module] = [self.levels[top].task_experts[task]]
        modules += [self.levels[j].gates[task] for j in range(max(top - 1, 0), top + 1)]
        return [*modules, self.heads[task]]

    def shared_parameters(self) -> list[nn.Parameter]:
        owned = {id(p) for t in self.task_names for p in parameters_of(*self._owned_modules(t))}
        return [p for p in parameters_of(self) if id(p) not in owned]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(*self._owned_modules(task))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of the top level's shared experts (for gradient methods with
        jacobian 'last_shared')."""
        return [p for expert in self.levels[-1].shared_experts.experts for p in last_layer(expert)]
