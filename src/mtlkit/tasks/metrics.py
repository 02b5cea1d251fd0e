"""Metric registry: each metric with a direction (higher or lower is better).

A metric is a function ``(output, target) -> float`` over a whole evaluation split, where
``output`` is what the task's head produced (logits for classification) and ``target`` the
labels. Every metric is registered in :data:`METRICS` with its direction, so model selection
and Δm know which way is better without being told. The metrics themselves are registered by
the task family modules.

Evaluation streams: a metric may also register an :class:`Accumulator` (``update(output,
target)`` per batch, ``compute()`` at the end, ``merge`` for data-parallel ranks) that keeps
per-batch state — counts, sums, a confusion matrix — and gives the same value as the
whole-split function. A metric without one is evaluated through :class:`WholeSplit`, which
keeps that metric's outputs and targets of the whole split (and only that metric's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtlkit.registry import Registry

Direction = Literal["max", "min"]


class Accumulator(ABC):
    """The state of one metric over the batches of a split seen so far.

    ``update`` takes one batch's outputs and targets (on the CPU, outputs in float32, as the
    whole-split function gets them); ``compute`` gives the metric's value over every batch
    seen; ``merge`` adds another accumulator's batches after this one's (data-parallel ranks,
    in rank order). Its value equals the metric's whole-split function on the concatenated
    batches.
    """

    @abstractmethod
    def update(self, output: Tensor, target: Tensor) -> None:
        """Add one batch."""

    @abstractmethod
    def compute(self) -> float:
        """The metric over every batch added."""

    @abstractmethod
    def merge(self, other: Accumulator) -> None:
        """Add ``other``'s batches (an accumulator of the same metric) after this one's."""


class Sums(Accumulator):
    """An accumulator whose state is a few sums (counts, totals, confusion matrices).

    A subclass implements ``stats(output, target)``: the batch's tensors by name, each added
    to the running sum (shapes may grow, e.g. a class count seen for the first time: the
    running sum is padded with zeros), and ``value(sums)``: the metric from the sums.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    @abstractmethod
    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The batch's contribution to each sum."""

    @abstractmethod
    def value(self, sums: dict[str, Tensor]) -> float:
        """The metric from the sums (``sums`` is empty when no batch was added)."""

    def update(self, output: Tensor, target: Tensor) -> None:
        self._add(self.stats(output, target))

    def _add(self, stats: dict[str, Tensor]) -> None:
        for key, value in stats.items():
            value = value.detach().cpu()
            old = self.sums.get(key)
            if old is None:
                self.sums[key] = value.clone()
                continue
            if old.shape == value.shape and old.dtype == torch.promote_types(
                old.dtype, value.dtype
            ):
                old.add_(value)  # the running sum is this accumulator's own tensor
                continue
            if old.shape != value.shape:  # pad both to the larger shape
                shape = [max(a, b) for a, b in zip(old.shape, value.shape, strict=True)]
                old, value = _pad(old, shape), _pad(value, shape)
            self.sums[key] = old + value

    def compute(self) -> float:
        return float(self.value(self.sums))

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, Sums)
        self._add(other.sums)


def _pad(tensor: Tensor, shape: list[int]) -> Tensor:
    if list(tensor.shape) == shape:
        return tensor
    out = torch.zeros(shape, dtype=tensor.dtype)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


class WholeSplit(Accumulator):
    """The accumulator of a metric that has none: it keeps the outputs and targets of every
    batch and calls the whole-split function once, at the end. Its memory grows with the
    split; it is used only for the metrics that need it (and for user metrics)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], float]) -> None:
        self.fn = fn
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, output: Tensor, target: Tensor) -> None:
        self.outputs.append(output.detach().cpu())
        self.targets.append(target.detach().cpu())

    def compute(self) -> float:
        if not self.outputs:
            return float("nan")
        return float(self.fn(torch.cat(self.outputs), torch.cat(self.targets)))

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, WholeSplit)
        self.outputs += other.outputs
        self.targets += other.targets


AccumulatorFactory = Callable[[], Accumulator]


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, whether higher (``max``) or lower (``min``) is better,
    and optionally its streaming :class:`Accumulator` (a factory of fresh ones)."""

    name: str
    fn: Callable[[Tensor, Tensor], float]
    direction: Direction
    accumulator: AccumulatorFactory | None = None

    def __call__(self, output: Tensor, target: Tensor) -> float:
        return float(self.fn(output, target))

    def accumulate(self) -> Accumulator:
        """A fresh accumulator of this metric (:class:`WholeSplit` when it registered none)."""
        return self.accumulator() if self.accumulator is not None else WholeSplit(self.fn)

    @property
    def streams(self) -> bool:
        """Whether this metric keeps per-batch state only (not the split's outputs)."""
        return self.accumulator is not None

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"


METRICS: Registry[Metric] = Registry("metric")


MetricFn = Callable[[Tensor, Tensor], float]


def metric(
    name: str, direction: Direction, accumulator: AccumulatorFactory | None = None
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name`` with its direction, and
    optionally the :class:`Accumulator` that computes it batch by batch."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS.register(name, Metric(name, fn, direction, accumulator))
        return fn

    return wrap


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    return METRICS.lookup(name)


def better(a: float, b: float, direction: Direction) -> bool:
    """Whether value ``a`` is strictly better than ``b`` under ``direction``."""
    return a > b if direction == "max" else a < b


__all__ = [
    "METRICS",
    "Accumulator",
    "AccumulatorFactory",
    "Direction",
    "Metric",
    "Sums",
    "WholeSplit",
    "better",
    "get_metric",
    "metric",
]
