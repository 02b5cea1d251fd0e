"""Multi-gate Mixture-of-Experts (MMoE).

Ma, Zhao, Yi, Chen, Hong, Chi 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD.

Algorithm (paper, eq. 5–6), for input x and tasks k = 1..K::

    f_i(x)  experts i = 1..n, shared by all tasks
    g^k(x) = softmax(W_gk x)              one gate per task, a distribution over the experts
    f^k(x) = Σ_i g^k(x)_i f_i(x)
    y_k    = h^k(f^k(x))                  the task's tower

Deviation: here x is the output of the given ``encoder`` (shared by all tasks), so a non-trivial
encoder adds a shared bottom below the experts and the gates read the encoder's representation;
with an identity-like encoder this is the paper's model. The towers are the tasks' heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

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


@ARCHITECTURES.register("mmoe")
class MMoE(MTLModel):
    """Multi-gate Mixture-of-Experts: shared experts, a softmax gate and a tower per task.

    Args:
        encoder: shared encoder (with ``out_features``) whose output feeds experts and gates.
        tasks: the tasks; each gets a gate and a head (its tower).
        num_experts: number of experts n (≥ 1).
        expert_hidden: layer sizes of each expert MLP (Linear-ReLU layers).

    What counts as shared: the encoder and the experts (every task's loss reaches them through
    its gate). Each task's gate and head are that task's own: no other task's output depends on
    them. There is no single shared representation (each head reads its own mixture), so
    representation-level gradient methods do not apply.

    Defaults (8 experts of one 64-unit layer) are ours; the paper tunes both per data set.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        check_count(num_experts, "mmoe", "num_experts")
        hidden = check_sizes(expert_hidden, "mmoe", "expert_hidden")
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        width = int(encoder.out_features)
        self.experts = ExpertGroup(width, hidden, num_experts)
        self.gates = nn.ModuleDict({t.name: SoftmaxGate(width, num_experts) for t in tasks})
        self.heads = nn.ModuleDict(
            {t.name: build_head(t, self.experts.out_features) for t in tasks}
        )

    def _run(self, inputs: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x = self.encoder(inputs)
        experts = self.experts(x)
        gates = {name: gate(x) for name, gate in self.gates.items()}
        outputs = {name: self.heads[name](mix(gates[name], experts)) for name in self.task_names}
        return outputs, gates

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self._run(inputs)[0]

    def gate_weights(self, inputs: Any) -> dict[str, Tensor]:
        """Each task's gate: a ``(B, num_experts)`` distribution over the experts."""
        return self._run(inputs)[1]

    def shared_parameters(self) -> list[nn.Parameter]:
        return parameters_of(self.encoder, self.experts)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(self.gates[task], self.heads[task])

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of every expert (for gradient methods with jacobian 'last_shared')."""
        return [p for expert in self.experts.experts for p in last_layer(expert)]
