"""A toy model and drivers for the loss-based methods' tests (not a test module).

The toy has one shared parameter vector θ and a bias per task; its task losses have very
different scales, so a method's weights matter. :func:`through_checkpoint` sends a state dict
through the checkpoint split (tensors → safetensors, the rest → JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from mtlkit.weighting import Weighting, get

TASKS = ("a", "b", "c")
NAMES = ("si", "uw", "dwa", "rlw", "gls", "imtl_l", "db_mtl", "famo", "stch", "excess_mtl")
#: options that make each method's state matter within a few steps
FAST: dict[str, dict[str, Any]] = {
    "stch": {"warmup_epochs": 1},
    "famo": {"lr": 0.1},
    "excess_mtl": {"step_size": 0.5},
    "db_mtl": {"beta_sigma": 0.5},
}


def make(name: str) -> Weighting:
    return get(name, **FAST.get(name, {}))


class Toy(nn.Module):
    """θ shared; task t: L_t = s_t · mean((X_t θ + b_t − y_t)²) + c_t, b_t its own parameter.

    The data belong to the task *name*, so building the losses in another order permutes them.
    """

    SCALES: ClassVar[dict[str, float]] = {"a": 1.0, "b": 10.0, "c": 0.1}

    def __init__(self, p: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(torch.randn(p, generator=g, dtype=torch.float64))
        self.bias = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros((), dtype=torch.float64)) for t in TASKS}
        )
        self.data = {
            t: (
                torch.randn(7, p, generator=g, dtype=torch.float64),
                torch.randn(7, generator=g, dtype=torch.float64),
                0.1 * (i + 1),
            )
            for i, t in enumerate(TASKS)
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.theta]

    def loss(self, task: str, theta: Tensor | None = None) -> Tensor:
        x, y, c = self.data[task]
        th = self.theta if theta is None else theta
        return self.SCALES[task] * ((x @ th + self.bias[task] - y) ** 2).mean() + c

    def losses(self, order: Sequence[str] = TASKS) -> dict[str, Tensor]:
        return {t: self.loss(t) for t in order}


def drive(
    method: Weighting, order: Sequence[str], steps: int, model: Toy | None = None
) -> tuple[list[dict[str, float]], Toy]:
    """Train the toy model with SGD (method parameters included); an epoch is two steps."""
    model = model or Toy()
    method.bind(list(order))
    opt = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.02)
    records = []
    for k in range(steps):
        opt.zero_grad()
        losses = model.losses(order)
        records.append(method.backward(losses, model).weights)
        opt.step()
        if k % 2 == 1:
            method.on_epoch_end(k // 2, {t: losses[t].item() + 0.01 * k for t in order})
    return records, model


def through_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """Split a state dict as checkpoints do (tensors → safetensors, the rest → JSON) and back."""
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    return {**json.loads(json.dumps(rest)), **st_load(st_save(tensors))}


# ---------------------------------------------------------------------------- registry, options


def shared_grad_of(name: str, losses_of: Callable[[Toy], dict[str, Tensor]]) -> tuple[Tensor, Toy]:
    method, model = make(name), Toy()
    method.backward(losses_of(model), model)
    assert model.theta.grad is not None
    return model.theta.grad.clone(), model
