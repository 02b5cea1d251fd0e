"""The loss-balancing interface and its registry.

A weighting method turns ``dict[task_name, loss]`` into gradients on a model's parameters::

    method = mtlkit.weighting.get("ew")
    record = method.backward(losses, model)   # fills .grad
    optimizer.step()

It works in any training loop; the Trainer calls nothing else. ``backward`` returns a
:class:`StepRecord` with what the method decided (task weights, and for gradient methods the
pairwise cosines and norms of the task gradients) for logging.

Scale convention: the update is a *sum* over tasks. Equal weighting gives Σ_i ∇L_i (weights 1,
so for a Jacobian J = I the update is the sum of the rows), and static weighting Σ_i α_i ∇L_i,
matching L = Σ α_i L_i. Methods whose weights live on the simplex (MGDA, ...) say so in their
docstring.

Two families share the interface:

- loss-based methods (:class:`LossWeighting`) combine the losses into one scalar and run one
  backward pass;
- gradient-based methods combine the per-task gradients of the shared parameters (the Jacobian)
  into one update.

A method that keeps state across steps sets ``stateful = True`` and implements
:meth:`Weighting.state_dict`, :meth:`Weighting.load_state_dict` and :meth:`Weighting.reset`.

Partial steps: a task with no label in a step (partial labels, or one-task-per-step training)
is passed as ``None``: ``method.backward({"a": loss_a, "b": None}, model)``. Task b then gets
weight 0 and no gradient, and the method runs exactly as it would on the present tasks alone
(:meth:`Weighting.restrict`): its per-task state (listed in ``task_state``) is sliced to the
present tasks, and only their entries are updated. Leaving a bound task out of the dict is
still an error, so a forgotten task is never silently dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")


@dataclass
class StepRecord:
    """What a weighting method decided at one step.

    ``weights`` maps each task to the weight its loss (or gradient) received. Gradient methods
    also fill ``norms`` (each task gradient's L2 norm) and ``cosines`` (the T×T matrix of
    pairwise cosine similarities, in task order). ``extra`` holds method-specific scalars.
    """

    weights: dict[str, float]
    norms: dict[str, float] | None = None
    cosines: list[list[float]] | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_log(self) -> dict[str, Any]:
        """A JSON-ready dict: ``weight/<task>``, ``grad_norm/<task>``, ``cosine/<a>/<b>``."""
        log: dict[str, Any] = {f"weight/{t}": w for t, w in self.weights.items()}
        if self.norms is not None:
            log.update({f"grad_norm/{t}": n for t, n in self.norms.items()})
        if self.cosines is not None:
            names = list(self.norms) if self.norms is not None else list(self.weights)
            for i, a in enumerate(names):
                for j in range(i + 1, len(names)):
                    log[f"cosine/{a}/{names[j]}"] = self.cosines[i][j]
        log.update(self.extra)
        return log


@dataclass(frozen=True)
class TaskState:
    """How an attribute of a method holds per-task state, for :meth:`Weighting.restrict`.

    ``axes`` are the dimensions indexed by task (``(0,)`` for a vector, ``(0, 1)`` for a
    task × task matrix, ``(1,)`` for a list of per-epoch task vectors). ``fill`` is the value
    given to the absent tasks when the state is first created during a partial step (None:
    such state is dropped and created again at the next full step).
    """

    axes: tuple[int, ...] = (0,)
    fill: float | None = None


class Weighting(ABC):
    """Base class of every loss-balancing method (see the module docstring)."""

    stateful: ClassVar[bool] = False
    #: attribute name → how it holds per-task state (see :meth:`restrict`)
    task_state: ClassVar[Mapping[str, TaskState]] = {}
    #: a short name for logs and test ids; set by subclasses
    name: ClassVar[str] = "weighting"

    def __init__(self) -> None:
        self.tasks: list[str] | None = None

    # ------------------------------------------------------------------ the interface

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        model: nn.Module,
        *,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord:
        """Fill ``.grad`` on ``model``'s parameters from the task ``losses``.

        A ``None`` loss marks a task absent from this step (see the module docstring): the
        step then runs on the present tasks only (:meth:`partial_backward`). Otherwise the
        losses are checked and stacked in task order and :meth:`step` does the method's work.

        ``representation`` is the shared representation the losses were computed from, for
        methods with ``needs_representation``. ``loss_scale`` multiplies the gradients that are
        written (for fp16 gradient scaling); the method's decisions use the unscaled losses.
        """
        partial = self.partial_backward(
            losses, model, representation=representation, loss_scale=loss_scale
        )
        if partial is not None:
            return partial
        stacked = self.stack_losses(losses)
        return self.step(
            losses, stacked, model, representation=representation, loss_scale=loss_scale
        )

    @abstractmethod
    def step(
        self,
        losses: Mapping[str, Tensor],
        stacked: Tensor,
        model: nn.Module,
        *,
        representation: Tensor | None,
        loss_scale: float,
    ) -> StepRecord:
        """The method's step with every bound task present: ``stacked`` is ``losses`` as a
        vector in task order (checked scalars). Subclasses implement this, not
        :meth:`backward`."""

    @property
    def needs_representation(self) -> bool:
        """Whether :meth:`backward` needs the shared representation."""
        return False

    @property
    def needs_all_tasks(self) -> bool:
        """Whether the method combines the gradients of several tasks within one step, so
        that steps with one task each (multi-input ``step_mode: single``) defeat it: true of
        every gradient-based method. Such methods need ``step_mode: mixed``."""
        return False

    @property
    def uses_representation(self) -> bool:
        """Whether :meth:`backward` is faster when given the shared representation (it then
        back-propagates each task through its head alone and the encoder once, batched)."""
        return self.needs_representation

    def bind(self, tasks: Sequence[str]) -> None:
        """Fix the task order. Called by :meth:`backward` on first use; later calls must name
        the same tasks."""
        tasks = list(tasks)
        if self.tasks is None:
            if not tasks:
                raise ConfigError(f"{self}: no tasks to balance")
            self.tasks = tasks
            self.on_bind()
        elif sorted(tasks) != sorted(self.tasks):
            missing = sorted(set(self.tasks) - set(tasks))
            extra = sorted(set(tasks) - set(self.tasks))
            parts = []
            if missing:
                parts.append(f"missing task(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unknown task(s) {', '.join(extra)}")
            raise TaskDataError(
                f"{self}: the losses do not match the tasks it was built for "
                f"({', '.join(self.tasks)}): {'; '.join(parts)}"
            )

    def on_bind(self) -> None:  # noqa: B027  (an optional hook)
        """Hook: called once the task order is known (size state per task here)."""

    @contextmanager
    def restrict(self, present: Sequence[str]) -> Iterator[None]:
        """Within the block, the method is bound to the ``present`` tasks only.

        Each attribute named in ``task_state`` is sliced to the present tasks on entry; on a
        normal exit the new values are written back into their entries, and the absent tasks'
        entries are left as they were (learned per-task parameters are sliced
        differentiably, so only the present entries receive a gradient). On an error the state
        is restored unchanged.
        """
        if self.tasks is None:
            raise ConfigError(f"{self}: bind(tasks) before restricting it to some of them")
        unknown = sorted(set(present) - set(self.tasks))
        if unknown or not present:
            raise TaskDataError(
                f"{self}: cannot restrict to task(s) {', '.join(present) or '(none)'}; "
                f"the tasks are {', '.join(self.tasks)}"
            )
        full = self.tasks
        idx = [i for i, t in enumerate(full) if t in set(present)]
        saved = {name: getattr(self, name) for name in self.task_state}
        for name, spec in self.task_state.items():
            setattr(self, name, _take(saved[name], spec.axes, idx))
        self.tasks = [full[i] for i in idx]
        ok = False
        try:
            yield
            ok = True
        finally:
            self.tasks = full
            for name, spec in self.task_state.items():
                new = getattr(self, name)
                kept = _put(saved[name], new, spec, idx, len(full)) if ok else saved[name]
                setattr(self, name, kept)

    def partial_backward(
        self,
        losses: Mapping[str, Tensor | None],
        model: nn.Module,
        *,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord | None:
        """The step when some tasks are absent (``None`` losses), else None.

        Runs :meth:`backward` on the present tasks inside :meth:`restrict`; absent tasks get
        weight 0 in the record. A step with no task present does nothing.
        """
        if not isinstance(losses, Mapping) or all(v is not None for v in losses.values()):
            return None
        self.bind(list(losses))
        present = {t: v for t, v in losses.items() if v is not None}
        absent = [t for t, v in losses.items() if v is None]
        if not present:
            return StepRecord(weights=dict.fromkeys(losses, 0.0), extra={"absent_tasks": 1.0})
        with self.restrict(list(present)):
            record = self.backward(
                present, model, representation=representation, loss_scale=loss_scale
            )
        record.weights.update(dict.fromkeys(absent, 0.0))
        record.extra["absent_tasks"] = float(len(absent))
        return record

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:  # noqa: B027
        """Hook: called by training loops after each epoch with each task's mean training loss
        (methods such as DWA use it)."""

    def parameters(self) -> list[nn.Parameter]:
        """The method's own learnable parameters, to be optimised with the model's."""
        return []

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The method's state: JSON-ready values and tensors (saved with checkpoints)."""
        return {"tasks": self.tasks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        tasks = state.get("tasks")
        self.tasks = None
        if tasks is not None:
            self.bind(tasks)

    def reset(self) -> None:
        """Forget all state gathered during training."""
        self.tasks = None

    # ------------------------------------------------------------------ helpers

    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The losses as a vector in task order, after checking each is a finite scalar."""
        if not isinstance(losses, Mapping) or not losses:
            raise TaskDataError(f"{self}: losses must be a non-empty dict of task → scalar loss")
        for task, loss in losses.items():
            if loss is None:
                raise TaskDataError(
                    f"task '{task}': loss is None (an absent task) inside {self}'s backward; "
                    "absent tasks are handled by partial_backward()"
                )
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise TaskDataError(f"task '{task}': loss must be a scalar tensor, got {shape}")
        self.bind(list(losses))
        assert self.tasks is not None
        return torch.stack([losses[t] for t in self.tasks])

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, shown by ``repr``."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def __str__(self) -> str:
        return type(self).__name__


class LossWeighting(Weighting):
    """A loss-based method: one backward pass of a combination of the losses.

    Subclasses implement :meth:`weights` (a weight per task from the detached losses), or
    override :meth:`combine` when the objective is not a weighted sum (uncertainty weighting's
    regulariser, geometric means, ...).
    """

    def weights(self, losses: Tensor) -> Tensor:
        """A weight per task, in task order, from the detached loss vector."""
        raise TypeError(f"{type(self).__name__} must override weights() or combine()")

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The scalar objective to differentiate, and the weight each task received."""
        w = self.weights(losses.detach()).to(losses.dtype)
        return (w * losses).sum(), w

    def step(
        self,
        losses: Mapping[str, Tensor],
        stacked: Tensor,
        model: nn.Module,
        *,
        representation: Tensor | None,
        loss_scale: float,
    ) -> StepRecord:
        total, w = self.combine(stacked)
        (total * loss_scale).backward()
        assert self.tasks is not None
        return StepRecord(weights=dict(zip(self.tasks, w.detach().tolist(), strict=True)))


def _index(axes: tuple[int, ...], idx: Tensor, dims: int) -> tuple[Any, ...]:
    """An advanced index selecting ``idx`` on each of ``axes`` (broadcast against each other)."""
    index: list[Any] = [slice(None)] * dims
    for k, axis in enumerate(axes):
        shape = [1] * len(axes)
        shape[k] = -1
        index[axis] = idx.view(shape)
    return tuple(index)


def _take(value: Any, axes: tuple[int, ...], idx: list[int]) -> Any:
    """The entries of the present tasks (see :meth:`Weighting.restrict`)."""
    if value is None or (isinstance(value, list) and not value):
        return value
    if isinstance(value, list):
        return _take(torch.tensor(value, dtype=torch.float64), axes, idx).tolist()
    positions = torch.tensor(idx, device=value.device)
    return value[_index(axes, positions, value.dim())]


def _put(full: Any, sub: Any, spec: TaskState, idx: list[int], num_tasks: int) -> Any:
    """``full`` with the present tasks' entries replaced by ``sub``."""
    if sub is None or isinstance(full, nn.Parameter):
        return full
    if isinstance(sub, list):
        if not sub:
            return full
        base = None if full is None or not full else torch.tensor(full, dtype=torch.float64)
        merged = _put(base, torch.tensor(sub, dtype=torch.float64), spec, idx, num_tasks)
        return None if merged is None else merged.tolist()
    if full is None:
        if spec.fill is None:
            return None
        shape = list(sub.shape)
        for axis in spec.axes:
            shape[axis] = num_tasks
        full = torch.full(shape, spec.fill, dtype=sub.dtype, device=sub.device)
    out = full.detach().clone()
    positions = torch.tensor(idx, device=out.device)
    out[_index(spec.axes, positions, out.dim())] = sub.detach().to(out)
    return out


def get(name: str, /, **params: Any) -> Weighting:
    """A weighting method by registered name, with its hyper-parameters.

    >>> get("static", weights={"a": 2.0, "b": 1.0})
    Static(weights={'a': 2.0, 'b': 1.0})
    """
    return WEIGHTINGS.build(name, **params)


def available() -> list[str]:
    """The registered method names."""
    return WEIGHTINGS.names()
