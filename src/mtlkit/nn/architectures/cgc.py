"""Customized Gate Control (CGC): shared experts, task-specific experts, one gate per task.

Tang, Liu, Zhao, Gong 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys.

Algorithm (paper, eq. 1–3), for input x and task k::

    E_s = [e_s,1 .. e_s,m_s](x)            shared experts
    E_k = [e_k,1 .. e_k,m_k](x)            task k's own experts
    w^k(x) = softmax(W_k x)                gate over the m_k + m_s experts of [E_k, E_s]
    g^k(x) = w^k(x) · [E_k, E_s]
    y_k    = t^k(g^k(x))                   the task's tower

:class:`ExtractionLevel` is one such level; PLE (:mod:`mtlkit.nn.architectures.ple`) stacks
them. Deviation: x is the output of the given ``encoder``, a shared bottom the paper does not
have (an identity-like encoder gives the paper's model); the towers are the tasks' heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.nn.architectures.experts import (
    ExpertGroup,
    SoftmaxGate,
    check_count,
    check_sizes,
    last_layer,
    mix,
    parameters_of,
)
from mtlkit.tasks import Task, task_map


@dataclass
class LevelGates:
    """The gate distributions of one extraction level.

    ``tasks[k]`` is task k's gate ``(B, m_k + m_s)`` over [task k's experts, shared experts];
    ``shared`` is the shared gate ``(B, m_s + Σ_k m_k)`` over [shared experts, every task's
    experts in task order], or None where the level has no shared gate.
    """

    tasks: dict[str, Tensor]
    shared: Tensor | None


class ExtractionLevel(nn.Module):
    """One CGC level: shared experts, each task's experts, a gate per task, and (in PLE's lower
    levels) a shared gate over all the level's experts that feeds the next level's shared path.
    """

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        num_shared_experts: int,
        num_task_experts: int,
        expert_hidden: Sequence[int],
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.shared_experts = ExpertGroup(in_features, expert_hidden, num_shared_experts)
        self.task_experts = nn.ModuleDict(
            {t: ExpertGroup(in_features, expert_hidden, num_task_experts) for t in task_names}
        )
        self.gates = nn.ModuleDict(
            {t: SoftmaxGate(in_features, num_task_experts + num_shared_experts) for t in task_names}
        )
        total = num_shared_experts + num_task_experts * len(self.task_names)
        self.shared_gate = SoftmaxGate(in_features, total) if shared_gate else None
        self.out_features = int(expert_hidden[-1])

    def forward(
        self, task_inputs: Mapping[str, Tensor], shared_input: Tensor
    ) -> tuple[dict[str, Tensor], Tensor | None, LevelGates]:
        """Each task's fused output, the shared path's output (None without a shared gate),
        and the gates."""
        shared = self.shared_experts(shared_input)
        own = {t: self.task_experts[t](task_inputs[t]) for t in self.task_names}
        gates = {t: self.gates[t](task_inputs[t]) for t in self.task_names}
        outputs = {t: mix(gates[t], torch.cat([own[t], shared], dim=1)) for t in self.task_names}
        shared_out = shared_weights = None
        if self.shared_gate is not None:
            shared_weights = self.shared_gate(shared_input)
            every = torch.cat([shared, *(own[t] for t in self.task_names)], dim=1)
            shared_out = mix(shared_weights, every)
        return outputs, shared_out, LevelGates(gates, shared_weights)


@ARCHITECTURES.register("cgc")
class CGC(MTLModel):
    """Customized Gate Control: shared and task-specific experts, a gate and a tower per task.

    Args:
        encoder: shared encoder (with ``out_features``) whose output feeds experts and gates.
        tasks: the tasks; each gets its experts, a gate and a head (its tower).
        num_shared_experts: m_s, experts every task's gate reads (≥ 0).
        num_task_experts: m_k, experts of each task (≥ 0); m_s + m_k must be ≥ 1.
        expert_hidden: layer sizes of each expert MLP (Linear-ReLU layers).

    What counts as shared: the encoder and the shared experts. A task's own experts, its gate
    and its head are that task's: no other task's output depends on them.

    Defaults (one shared and one task expert of one 64-unit layer) are ours; the paper tunes
    the expert counts per data set.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        m_s, m_k = check_expert_counts("cgc", num_shared_experts, num_task_experts)
        hidden = check_sizes(expert_hidden, "cgc", "expert_hidden")
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        self.level = ExtractionLevel(
            int(encoder.out_features), self.task_names, m_s, m_k, hidden, shared_gate=False
        )
        self.heads = nn.ModuleDict({t.name: build_head(t, self.level.out_features) for t in tasks})

    def _run(self, inputs: Any) -> tuple[dict[str, Tensor], LevelGates]:
        x = self.encoder(inputs)
        fused, _, gates = self.level(dict.fromkeys(self.task_names, x), x)
        return {t: self.heads[t](fused[t]) for t in self.task_names}, gates

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self._run(inputs)[0]

    def gate_weights(self, inputs: Any) -> dict[str, Tensor]:
        """Each task's gate: a ``(B, m_k + m_s)`` distribution over [own, shared] experts."""
        return self._run(inputs)[1].tasks

    def shared_parameters(self) -> list[nn.Parameter]:
        return parameters_of(self.encoder, self.level.shared_experts)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(
            self.level.task_experts[task], self.level.gates[task], self.heads[task]
        )

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of every shared expert, or of the encoder when there is none (for
        gradient methods with jacobian 'last_shared')."""
        experts = self.level.shared_experts.experts
        if not len(experts):
            return last_layer(self.encoder)
        return [p for expert in experts for p in last_layer(expert)]


def check_expert_counts(architecture: str, shared: int, task: int) -> tuple[int, int]:
    """Expert counts m_s, m_k ≥ 0 with at least one expert behind each task's gate."""
    m_s = check_count(shared, architecture, "num_shared_experts", minimum=0)
    m_k = check_count(task, architecture, "num_task_experts", minimum=0)
    if m_s + m_k < 1:
        raise ConfigError(
            f"architecture '{architecture}': options 'num_shared_experts' + 'num_task_experts' "
            f"must be ≥ 1 (each task's gate needs an expert), got {m_s} + {m_k}"
        )
    return m_s, m_k
