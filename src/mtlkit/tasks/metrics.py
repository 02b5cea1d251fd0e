"""Metric registry: each metric with a direction (higher or lower is better).

A metric is a function ``(output, target) -> float`` over a whole evaluation split, where
``output`` is what the task's head produced (logits for classification) and ``target`` the
labels. Every metric is registered in :data:`METRICS` with its direction, so model selection
and Δm know which way is better without being told. The metrics themselves are registered by
the task family modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from mtlkit.registry import Registry

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    """A named metric: its function and whether higher (``max``) or lower (``min``) is better."""

    name: str
    fn: Callable[[Tensor, Tensor], float]
    direction: Direction

    def __call__(self, output: Tensor, target: Tensor) -> float:
        return float(self.fn(output, target))

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"


METRICS: Registry[Metric] = Registry("metric")


MetricFn = Callable[[Tensor, Tensor], float]


def metric(name: str, direction: Direction) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name`` with its direction."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS.register(name, Metric(name, fn, direction))
        return fn

    return wrap


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    return METRICS.lookup(name)


def better(a: float, b: float, direction: Direction) -> bool:
    """Whether value ``a`` is strictly better than ``b`` under ``direction``."""
    return a > b if direction == "max" else a < b


__all__ = ["METRICS", "Direction", "Metric", "better", "get_metric", "metric"]
