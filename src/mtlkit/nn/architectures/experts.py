"""Experts, softmax gates and option checks shared by the mixture-of-experts architectures.

An expert is a small MLP (Linear-ReLU layers) on the encoder's representation; a softmax gate
maps the same representation to a distribution over a group of experts; :func:`mix` takes the
gate-weighted sum of the experts' outputs. MMoE, CGC/PLE and DSelect-k are built from them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError


def check_count(value: int, architecture: str, option: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ConfigError naming the architecture and the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"architecture '{architecture}': option '{option}' must be an integer ≥ {minimum}, "
            f"got {value!r}"
        )
    return int(value)


def check_sizes(sizes: Sequence[int], architecture: str, option: str) -> list[int]:
    """Layer sizes: a non-empty sequence of integers ≥ 1."""
    if isinstance(sizes, int | str) or not sizes:
        raise ConfigError(
            f"architecture '{architecture}': option '{option}' must be a non-empty list of "
            f"layer sizes, got {sizes!r}"
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ConfigError(
                f"architecture '{architecture}': option '{option}' must hold sizes ≥ 1, "
                f"got {list(sizes)!r}"
            )
    return [int(size) for size in sizes]


class Expert(nn.Module):
    """One expert: Linear-ReLU layers of sizes ``hidden``; its output has ``hidden[-1]`` values."""

    def __init__(self, in_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ExpertGroup(nn.Module):
    """``count`` experts on the same input; the output stacks them: ``(B, count, width)``."""

    def __init__(self, in_features: int, hidden: Sequence[int], count: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(Expert(in_features, hidden) for _ in range(count))
        self.out_features = int(hidden[-1])

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: Tensor) -> Tensor:
        if not len(self.experts):
            return x.new_zeros((x.shape[0], 0, self.out_features))
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class SoftmaxGate(nn.Module):
    """g(x) = softmax(W x): a distribution over ``num_experts`` experts for each example.

    No bias, as in the MMoE paper's gate g^k(x) = softmax(W_gk x).
    """

    def __init__(self, in_features: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_experts, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """Σ_e weights[:, e] · experts[:, e]: ``(B, E)`` and ``(B, E, D)`` give ``(B, D)``."""
    return torch.einsum("be,bed->bd", weights, experts)


def parameters_of(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The trainable parameters of ``modules``, in order, each once."""
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def last_layer(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the last submodule (in registration order) that has any."""
    last: list[nn.Parameter] = []
    for m in module.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if own:
            last = own
    return last
