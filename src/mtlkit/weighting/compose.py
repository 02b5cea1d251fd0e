"""Composition: a loss-based weighting first, then a gradient-based aggregation.

As in Auto-Lambda (Liu, Liang, Li, Johns & Davison, 2022, "Auto-Lambda: Disentangling Dynamic
Task Relationships", TMLR), where learned loss weights are combined with a gradient method such
as PCGrad: the loss weighting sets w_i from the losses, and the gradient method combines the
per-task gradients of the *weighted* losses w_i·L_i.

The loss weighting's objective need not be a weighted sum (uncertainty weighting adds a
regulariser Σ_i s_i, and its weights depend on its own parameters). It is split into

    objective = Σ_i w̄_i L_i + rest,     rest = objective − Σ_i w̄_i L_i,

where w̄ = w detached. The aggregator gets the weighted losses w̄_i L_i; ``rest`` is
back-propagated normally into the loss weighting's own parameters only, so they receive exactly
the gradient of the full objective (for UW, −e^{−s_i} L_i + 1), while the model's parameters
receive the aggregator's update (the gradient of ``rest`` with respect to them is zero at the
current point, since w − w̄ = 0).

A config names both parts::

    weighting: uw
    aggregator: pcgrad

and :func:`build` turns that into one :class:`Composed` method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import (
    WEIGHTINGS,
    LossWeighting,
    StateField,
    StepContext,
    StepRecord,
    Weighting,
    Wrapper,
)
from mtlkit.weighting.gradient import GradientWeighting

__all__ = ["Composed", "build", "compose"]

Spec = str | Mapping[str, Any]


def _from_spec(spec: Spec | Weighting, role: str) -> Weighting:
    """A method from a name, a ``{name: ..., **hyper-parameters}`` mapping or an instance."""
    if isinstance(spec, Weighting):
        return spec
    method: Weighting
    if isinstance(spec, str):
        method = WEIGHTINGS.build(spec)
        return method
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"compose: option '{role}' needs a 'name', got {dict(spec)}")
        method = WEIGHTINGS.build(name, **params)
        return method
    raise ConfigError(
        f"compose: option '{role}' must be a method name or a mapping with 'name', "
        f"got {type(spec).__name__}"
    )


@WEIGHTINGS.register("compose")
class Composed(Wrapper):
    """A loss weighting followed by a gradient aggregation (see the module docstring).

    ``weighting`` must be loss-based (EW, static, UW, DWA, ...) and ``aggregator``
    gradient-based (PCGrad, MGDA, ...). The record's weights are the products w_i·α_i (the
    aggregator's effective weights applied to the weighted losses); ``extra`` has both factors
    as ``loss_weight/<task>`` and ``grad_weight/<task>``.
    """

    name = "compose"
    #: both parts' state, saved under their keys; restrict() and reset() reach them
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "weighting": StateField("method"),
        "aggregator": StateField("method"),
    }

    def __init__(self, weighting: Spec | Weighting, aggregator: Spec | Weighting) -> None:
        super().__init__()
        first = _from_spec(weighting, "weighting")
        second = _from_spec(aggregator, "aggregator")
        if not isinstance(first, LossWeighting):
            raise ConfigError(
                f"compose: option 'weighting' must be a loss-based method, got {first}"
            )
        if not isinstance(second, GradientWeighting):
            raise ConfigError(
                f"compose: option 'aggregator' must be a gradient-based method, got {second}"
            )
        self.weighting: LossWeighting = first
        self.aggregator: GradientWeighting = second
        self.stateful = self.weighting.stateful or self.aggregator.stateful  # type: ignore[misc]

    @property
    def wrapped(self) -> Weighting:
        return self.aggregator

    def step(self, ctx: StepContext, /) -> StepRecord:
        assert self.tasks is not None
        stacked = ctx.stacked
        self.weighting.bind(self.tasks)
        objective, w = self.weighting.combine(stacked)
        w = w.detach().to(stacked.dtype)
        weighted = w * stacked
        own = [p for p in self.weighting.parameters() if p.requires_grad]
        if own:
            rest = objective - weighted.sum()
            (rest * ctx.loss_scale).backward(inputs=own, retain_graph=True)
        # the aggregator steps on the weighted losses, in the same context (and its hooks)
        losses = {t: ctx.losses[t] * w[i] for i, t in enumerate(self.tasks)}
        record = self.aggregator.step(
            replace(ctx, losses=losses, stacked=self.aggregator.stack_losses(losses))
        )
        alpha = record.weights
        extra = dict(record.extra)
        for t, wt in zip(self.tasks, w.tolist(), strict=True):
            extra[f"loss_weight/{t}"] = wt
            extra[f"grad_weight/{t}"] = alpha[t]
        return StepRecord(
            weights={t: wt * alpha[t] for t, wt in zip(self.tasks, w.tolist(), strict=True)},
            norms=record.norms,
            cosines=record.cosines,
            extra=extra,
        )

    def on_bind(self) -> None:
        assert self.tasks is not None
        self.weighting.bind(self.tasks)
        self.aggregator.bind(self.tasks)

    def use_task_weights(self, weights: Mapping[str, float]) -> None:
        self.weighting.use_task_weights(weights)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.weighting.on_epoch_end(epoch, mean_losses)
        self.aggregator.on_epoch_end(epoch, mean_losses)

    def hyperparameters(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "aggregator": self.aggregator}

    def __str__(self) -> str:
        return f"{self.weighting}+{self.aggregator}"


def compose(weighting: Spec | Weighting, aggregator: Spec | Weighting) -> Composed:
    """Loss weights first, then gradient aggregation: ``compose("uw", "pcgrad")``."""
    return Composed(weighting, aggregator)


def build(weighting: Spec | Weighting, aggregator: Spec | Weighting | None = None) -> Weighting:
    """The method a config describes: ``weighting`` alone, or composed with ``aggregator``.

    Each is a registered name or a mapping ``{name: ..., **hyper-parameters}``; unknown names
    raise a RegistryError listing the available ones.

    >>> build("ew")
    EW()
    """
    method = _from_spec(weighting, "weighting")
    if aggregator is None:
        return method
    if isinstance(method, GradientWeighting):
        raise ConfigError(
            f"compose: option 'weighting' is the gradient-based method {method}; put it under "
            "'aggregator' and give a loss-based method as 'weighting'"
        )
    return Composed(method, _from_spec(aggregator, "aggregator"))
