"""Task subsampling: each step, a method runs on a random subset of k of the T tasks.

For T in the hundreds, a gradient method's cost grows with T (T rows of the Jacobian, a T × T
Gram matrix and its solver); drawing k tasks per step bounds it by k. The wrapper draws, at
every step, k distinct tasks uniformly among the tasks present in the step (every k-subset
equally likely), scales their losses by n/k (n: the number present), and runs the wrapped
method on them alone (:meth:`~mtlkit.weighting.Weighting.restrict`: its per-task state is
sliced to the subset, and only the subset's entries are updated). The other tasks get weight 0
and no gradient in that step.

What is unbiased, precisely (expectations over the draw, for one batch):

- the objective and its gradient, for a method whose objective is a fixed linear combination
  of the losses (EW; static weights α): E[Σ_{i∈S} (n/k) α_i L_i] = Σ_i α_i L_i, since each
  task is in S with probability k/n; so is every parameter's gradient, shared or
  task-specific;
- each task-specific (head) parameter's gradient, for every method: task i's head receives
  (n/k)·∇L_i with probability k/n and nothing otherwise, whose mean is ∇L_i;
- not, in general, the update of an adaptive method: a loss weighting whose weights depend on
  the losses of the tasks present (DWA, UW, ...) or a gradient method (MGDA, UPGrad, PCGrad,
  ...), whose update is a non-linear function of the k task gradients, gives in expectation
  the mean of the method over k-subsets, which is not the method on all T tasks. The n/k
  factor keeps the update on the scale of a sum over all tasks (the project's convention:
  k identical gradients g give k·g, times n/k is n·g).

The draws come from a ``torch.Generator`` owned by the wrapper and seeded with ``seed``; its
state is saved with the method's state (:meth:`~mtlkit.weighting.Weighting.state_dict`), so a
resumed run draws exactly what the uninterrupted one would, and data-parallel ranks built with
the same seed draw the same subsets. In a config: ``train.tasks_per_step`` (the run's seed
seeds the draws)::

    weighting: upgrad
    train:
      tasks_per_step: 16
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting._manipulation import check_seed
from mtlkit.weighting.base import StateField, StepContext, StepRecord, Weighting, Wrapper

__all__ = ["TaskSubsample", "subsample"]


class TaskSubsample(Wrapper):
    """``method`` on ``tasks_per_step`` tasks drawn at random each step (module docstring)."""

    name = "subsample"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "method": StateField("method"),
        "_generator": StateField("generator", init="seed"),
    }

    def __init__(self, method: Weighting, tasks_per_step: int, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(method, Weighting):
            raise ConfigError(
                f"subsample: option 'method' must be a weighting method, got "
                f"{type(method).__name__}"
            )
        if isinstance(tasks_per_step, bool) or not isinstance(tasks_per_step, int):
            raise ConfigError(
                f"subsample: option 'tasks_per_step' must be an integer, got {tasks_per_step!r}"
            )
        if tasks_per_step < 1:
            raise ConfigError(
                f"subsample: option 'tasks_per_step' must be ≥ 1, got {tasks_per_step}"
            )
        self.method = method
        self.tasks_per_step = tasks_per_step
        self.seed = check_seed("subsample", seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------ what the loop reads

    @property
    def wrapped(self) -> Weighting:
        return self.method

    def on_bind(self) -> None:
        assert self.tasks is not None
        if self.tasks_per_step > len(self.tasks):
            raise ConfigError(
                f"subsample: option 'tasks_per_step' ({self.tasks_per_step}) is more than the "
                f"number of tasks ({len(self.tasks)})"
            )
        self.method.bind(self.tasks)

    def use_task_weights(self, weights: Mapping[str, float]) -> None:
        self.method.use_task_weights(weights)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.method.on_epoch_end(epoch, mean_losses)

    # ------------------------------------------------------------------ the step

    def draw(self, tasks: Sequence[str]) -> list[str]:
        """k of ``tasks`` uniformly at random (each k-subset equally likely), in their order;
        all of them when there are at most k."""
        n, k = len(tasks), self.tasks_per_step
        if n <= k:
            return list(tasks)
        picked = torch.randperm(n, generator=self._generator)[:k].sort().values.tolist()
        return [tasks[i] for i in picked]

    def step(self, ctx: StepContext, /) -> StepRecord:
        assert self.tasks is not None
        tasks = self.tasks
        chosen = self.draw(tasks)
        if len(chosen) == len(tasks):
            record = self.method.step(ctx)
            record.extra["sampled_tasks"] = float(len(chosen))
            return record
        factor = len(tasks) / len(chosen)
        losses = {t: ctx.losses[t] * factor for t in chosen}
        with self.method.restrict(chosen):
            stacked = self.method.stack_losses(losses)
            record = self.method.step(replace(ctx, losses=losses, stacked=stacked))
        weights = dict.fromkeys(tasks, 0.0)
        weights.update({t: w * factor for t, w in record.weights.items()})  # on L_i itself
        norms = None if record.norms is None else {t: n / factor for t, n in record.norms.items()}
        extra = {**record.extra, "sampled_tasks": float(len(chosen))}
        return StepRecord(weights=weights, norms=norms, cosines=record.cosines, extra=extra)

    def hyperparameters(self) -> dict[str, Any]:
        return {"method": self.method, "tasks_per_step": self.tasks_per_step, "seed": self.seed}

    def __str__(self) -> str:
        return f"{self.method}/subsample{self.tasks_per_step}"


def subsample(method: Weighting, tasks_per_step: int, seed: int = 0) -> TaskSubsample:
    """``method`` run on ``tasks_per_step`` tasks drawn at random each step.

    >>> from mtlkit.weighting import get
    >>> subsample(get("upgrad"), 8)
    TaskSubsample(method=UPGrad(), tasks_per_step=8, seed=0)
    """
    return TaskSubsample(method, tasks_per_step, seed)
