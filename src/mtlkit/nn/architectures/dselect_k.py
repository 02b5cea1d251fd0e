"""DSelect-k: a differentiable gate that selects at most k of n experts per task.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi 2021, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS.

Algorithm (paper, section 3), n experts, m = ⌈log₂ n⌉ bits, per task k single-expert
selectors i = 1..k::

    S(t) = 0 if t ≤ −γ/2;  1 if t ≥ γ/2;  −2/γ³ t³ + 3/(2γ) t + 1/2 otherwise   (smooth step)
    r(z)_l = Π_j [S(z_j) if bit j of l is 1 else 1 − S(z_j)]      l = 0..2^m − 1
    q(α, Z) = Σ_i softmax(α)_i r(z^(i))                           the gate, a distribution
    y = tower(Σ_l q_l f_l(x))

Each r(z) is a distribution over the 2^m binary codes; once every S(z_j) is 0 or 1 it is
one-hot, so the gate selects at most k experts, yet it stays differentiable while z is inside
(−γ/2, γ/2). With ``per_example`` the logits are linear in the example (z^(i) = G^(i) x,
α = W x; the paper's per-example gate), otherwise they are parameters (its static gate). The
optional entropy term λ Σ_i h(r(z^(i))) pushes the selectors towards binary.

Deviations:
- when n is not a power of two, code l selects expert l mod n (so the 2^m codes cover every
  expert and r still sums to 1); for n = 2^m this is the paper's gate;
- the entropy term of a per-example gate is computed from the encoder output *detached*: it
  trains the selectors only, so its graph is independent of the task losses' graph;
- the selector logits start near 0 (uniform in ±γ/100 for static gates, small weights for
  per-example ones), so every selector starts in the smooth region, as in the authors' code;
- x is the output of the given ``encoder``, which the paper does not have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.architectures.base import ARCHITECTURES, MTLModel, build_head
from mtlkit.nn.architectures.experts import (
    ExpertGroup,
    check_count,
    check_sizes,
    last_layer,
    mix,
    parameters_of,
)
from mtlkit.tasks import Task, task_map


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth step S of the paper: 0 below −γ/2, 1 above γ/2, C¹ in between."""
    t = t.clamp(-gamma / 2, gamma / 2)
    return -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5


class DSelectGate(nn.Module):
    """One task's DSelect-k gate: k single-expert selectors combined by softmax weights."""

    def __init__(
        self, in_features: int, num_experts: int, k: int, gamma: float, per_example: bool
    ) -> None:
        super().__init__()
        self.num_experts, self.k, self.gamma = num_experts, k, gamma
        self.bits = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
        codes = torch.arange(2**self.bits)
        # codes[l, j] = bit j of l; assign[l, e] = 1 when code l selects expert e
        self.register_buffer(
            "codes", ((codes.unsqueeze(1) >> torch.arange(self.bits)) & 1).float(), False
        )
        self.register_buffer(
            "assign", nn.functional.one_hot(codes % num_experts, num_experts).float(), False
        )
        self.per_example = per_example
        # with one expert there is no bit to learn (m = 0): no code logits at all
        self.z: nn.Linear | None = None
        self.z_static: nn.Parameter | None = None
        if per_example:
            if self.bits:
                self.z = nn.Linear(in_features, k * self.bits)
                bound = gamma / 100 / math.sqrt(in_features)
                nn.init.uniform_(self.z.weight, -bound, bound)
                nn.init.zeros_(self.z.bias)
            self.alpha = nn.Linear(in_features, k)
        else:
            if self.bits:
                init = torch.empty(k, self.bits).uniform_(-gamma / 100, gamma / 100)
                self.z_static = nn.Parameter(init)
            self.alpha_static = nn.Parameter(torch.zeros(k))

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The selectors' code logits ``(B, k, m)`` and combination logits ``(B, k)``."""
        batch = x.shape[0]
        if self.z is not None:
            z = self.z(x).view(batch, self.k, self.bits)
        elif self.z_static is not None:
            z = self.z_static.expand(batch, self.k, self.bits)
        else:
            z = x.new_zeros((batch, self.k, 0))
        alpha = self.alpha(x) if self.per_example else self.alpha_static.expand(batch, self.k)
        return z, alpha

    def selectors(self, z: Tensor) -> Tensor:
        """r(z^(i)) mapped to experts: ``(B, k, n)``, each row a distribution."""
        s = smooth_step(z, self.gamma).unsqueeze(2)  # (B, k, 1, m)
        per_bit = self.codes * s + (1 - self.codes) * (1 - s)  # (B, k, 2^m, m)
        return per_bit.prod(dim=-1) @ self.assign

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The gate ``(B, n)`` and the single-expert selectors ``(B, k, n)``."""
        z, alpha = self.logits(x)
        r = self.selectors(z)
        return torch.einsum("bk,bkn->bn", torch.softmax(alpha, dim=-1), r), r


def selector_entropy(r: Tensor) -> Tensor:
    """Σ_i h(r^(i)) averaged over the batch, for selectors ``(B, k, n)``."""
    return -(r * torch.log(r.clamp_min(1e-12))).sum(dim=(1, 2)).mean()


@ARCHITECTURES.register("dselect_k")
class DSelectK(MTLModel):
    """Mixture of shared experts with a DSelect-k gate per task (at most k experts each).

    Args:
        encoder: shared encoder (with ``out_features``) whose output feeds experts and gates.
        tasks: the tasks; each gets a gate and a head (its tower).
        num_experts: n (≥ 1).
        k: selectors per task, the most experts a task ends up using (1 ≤ k ≤ n).
        expert_hidden: layer sizes of each expert MLP (Linear-ReLU layers).
        gamma: γ > 0, the width of the smooth step's soft region (1.0 in the authors' code).
        entropy_reg: λ ≥ 0, the weight of the entropy term returned by :meth:`regularization`
            (0 turns it off).
        per_example: per-example gates (logits linear in x) or static ones.

    What counts as shared: the encoder and the experts. Each task's gate and head are that
    task's own. The defaults n = 8, k = 2 and the expert size are ours; the paper tunes them.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        num_experts: int = 8,
        k: int = 2,
        expert_hidden: Sequence[int] = (64,),
        gamma: float = 1.0,
        entropy_reg: float = 0.0,
        per_example: bool = True,
    ) -> None:
        super().__init__()
        tasks = list(task_map(tasks).values())
        n = check_count(num_experts, "dselect_k", "num_experts")
        k = check_count(k, "dselect_k", "k")
        if k > n:
            raise ConfigError(
                f"architecture 'dselect_k': option 'k' must be ≤ num_experts ({n}), got {k}"
            )
        hidden = check_sizes(expert_hidden, "dselect_k", "expert_hidden")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ConfigError(f"architecture 'dselect_k': option 'gamma' must be > 0, got {gamma}")
        if not (math.isfinite(entropy_reg) and entropy_reg >= 0):
            raise ConfigError(
                f"architecture 'dselect_k': option 'entropy_reg' must be ≥ 0, got {entropy_reg}"
            )
        self.task_names = [t.name for t in tasks]
        self.k, self.gamma, self.entropy_reg = k, float(gamma), float(entropy_reg)
        self.encoder = encoder
        width = int(encoder.out_features)
        self.experts = ExpertGroup(width, hidden, n)
        self.gates = nn.ModuleDict(
            {t.name: DSelectGate(width, n, k, self.gamma, per_example) for t in tasks}
        )
        self.heads = nn.ModuleDict(
            {t.name: build_head(t, self.experts.out_features) for t in tasks}
        )
        self._entropy: Tensor | None = None

    def _run(self, inputs: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x = self.encoder(inputs)
        experts = self.experts(x)
        gates = {name: gate(x)[0] for name, gate in self.gates.items()}
        if self.entropy_reg > 0:
            detached = x.detach()
            self._entropy = sum(
                (selector_entropy(gate(detached)[1]) for gate in self.gates.values()),
                start=x.new_zeros(()),
            )
        outputs = {t: self.heads[t](mix(gates[t], experts)) for t in self.task_names}
        return outputs, gates

    def forward(self, inputs: Any) -> dict[str, Tensor]:
        return self._run(inputs)[0]

    def gate_weights(self, inputs: Any) -> dict[str, Tensor]:
        """Each task's gate: a ``(B, num_experts)`` distribution with at most k experts once
        its selectors are binary."""
        return self._run(inputs)[1]

    def regularization(self) -> Tensor:
        """λ Σ_tasks Σ_i h(r(z^(i))) of the last forward pass (0 when λ = 0 or before any)."""
        if self.entropy_reg == 0 or self._entropy is None:
            return super().regularization()
        return self.entropy_reg * self._entropy

    def shared_parameters(self) -> list[nn.Parameter]:
        return parameters_of(self.encoder, self.experts)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return parameters_of(self.gates[task], self.heads[task])

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of every expert (for gradient methods with jacobian 'last_shared')."""
        return [p for expert in self.experts.experts for p in last_layer(expert)]
