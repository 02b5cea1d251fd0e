"""Optimiser and learning-rate scheduler registries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mtlkit.errors import ConfigError
from mtlkit.registry import Registry

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)

SCHEDULERS: Registry[Any] = Registry("scheduler")


@SCHEDULERS.register("none")
def no_schedule(optimizer: Optimizer, epochs: int) -> None:
    """A constant learning rate."""
    return None


@SCHEDULERS.register("cosine")
def cosine(optimizer: Optimizer, epochs: int, min_lr: float = 0.0) -> LRScheduler:
    """Cosine annealing from the base rate to ``min_lr`` over the run, stepped per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs, 1), eta_min=min_lr
    )


@SCHEDULERS.register("step")
def step(optimizer: Optimizer, epochs: int, step_size: int = 10, gamma: float = 0.1) -> LRScheduler:
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""
    if step_size < 1 or not 0 < gamma <= 1:
        raise ConfigError(
            f"scheduler 'step': need step_size ≥ 1 and 0 < gamma ≤ 1, got {step_size}, {gamma}"
        )
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("exponential")
def exponential(optimizer: Optimizer, epochs: int, gamma: float = 0.95) -> LRScheduler:
    """Multiply the rate by ``gamma`` every epoch."""
    if not 0 < gamma <= 1:
        raise ConfigError(f"scheduler 'exponential': need 0 < gamma ≤ 1, got {gamma}")
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def build_optimizer(name: str, groups: Iterable[Any], **params: Any) -> Optimizer:
    """A registered optimiser over parameter groups."""
    try:
        return OPTIMIZERS.build(name, list(groups), **params)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"optimizer '{name}': {err}") from None
