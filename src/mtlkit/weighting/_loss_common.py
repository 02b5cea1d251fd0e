"""Small helpers shared by the loss-based methods: option checks, positive losses, and the
per-task learnable parameters of UW and IMTL-L."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError


def check_real(
    method: str,
    option: str,
    value: object,
    *,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
    high_strict: bool = False,
) -> float:
    """``value`` as a finite float within the bounds; a ConfigError naming the method and option
    otherwise. ``strict`` makes the lower bound exclusive, ``high_strict`` the upper one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{method}: option '{option}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{method}: option '{option}' must be a finite number, got {value!r}")
    if low is not None and (number <= low if strict else number < low):
        raise ConfigError(
            f"{method}: option '{option}' must be {'>' if strict else '≥'} {low}, got {value}"
        )
    if high is not None and (number >= high if high_strict else number > high):
        raise ConfigError(
            f"{method}: option '{option}' must be {'<' if high_strict else '≤'} {high}, got {value}"
        )
    return number


def check_int(method: str, option: str, value: object, *, low: int) -> int:
    """``value`` as an int ≥ ``low``; a ConfigError naming the method and option otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{method}: option '{option}' must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{method}: option '{option}' must be ≥ {low}, got {value}")
    return value


def check_positive_losses(method: str, tasks: list[str], losses: Tensor) -> None:
    """A TaskDataError naming the task when a loss is not > 0 (its logarithm is undefined)."""
    bad = (losses.detach() <= 0).nonzero().flatten().tolist()
    if bad:
        task = tasks[bad[0]]
        raise TaskDataError(
            f"{method}: task '{task}': loss must be > 0 for this method (it takes log L), "
            f"got {float(losses[bad[0]].detach())}"
        )


def task_parameter(n: int, init: float) -> nn.Parameter:
    """A learnable vector with one entry per task, filled with ``init``."""
    return nn.Parameter(torch.full((n,), float(init)))
