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

A new method implements :meth:`Weighting.step`, which receives one :class:`StepContext` (the
checked losses, their vector in task order, the model, the representation, the gradient scale,
and the data-parallel hook). :meth:`Weighting.backward` does the rest once for every method.

State. A method's state lives in plain attributes that its class declares in
``state_fields`` (attribute name → :class:`StateField`: what it holds, its key in the state
dict, its per-task axes). From that one declaration the base class gives
:meth:`~Weighting.state_dict`, :meth:`~Weighting.load_state_dict` (errors name the method and
the field), :meth:`~Weighting.reset`, :meth:`~Weighting.to` and :meth:`~Weighting.restrict`;
a method keeps only its algorithm. Each class declares its own fields; those of its bases are
merged in. Methods are deliberately not ``nn.Module`` s: ``parameters()`` means the method's own
learnable parameters (uncertainty weighting's log-variances), the ones declared with kind
``"parameter"``, and the state is more than parameters and buffers (random generators,
counters, per-epoch histories). A method that keeps state across steps also sets
``stateful = True``.

Partial steps: a task with no label in a step (partial labels, or one-task-per-step training)
is passed as ``None``: ``method.backward({"a": loss_a, "b": None}, model)``. Task b then gets
weight 0 and no gradient, and the method runs exactly as it would on the present tasks alone
(:meth:`Weighting.restrict`): its per-task state (the fields declared with ``axes``) is sliced
to the present tasks, and only their entries are updated. Leaving a bound task out of the dict
is still an error, so a forgotten task is never silently dropped.

This module is the whole interface (the record, the step context, the base classes), a little
over 400 lines; the state mechanics it uses are in ``_state.py``.

Capabilities are class attributes, read by the layers above instead of method names:
``static_weights`` (the weights are fixed hyper-parameters, which ``mtlkit tune`` can search)
and ``takes_task_weights`` (the ``weights`` option is the α that a config's task weights give).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, cast

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry
from mtlkit.weighting._state import StateField, put, take

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")

__all__ = [
    "WEIGHTINGS",
    "LossWeighting",
    "StateField",
    "StepContext",
    "StepRecord",
    "Weighting",
    "available",
    "get",
]


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
class StepContext:
    """Everything a method's :meth:`Weighting.step` works from, for one step.

    ``losses``: the present tasks' scalar losses (checked); ``stacked``: the same as a vector in
    the method's task order; ``model``: the model whose ``.grad`` the step fills;
    ``representation``: the shared representation the losses were computed from, or None;
    ``loss_scale``: multiplies the gradients that are written (fp16 gradient scaling; the
    method's decisions use the unscaled losses); ``reduce_jacobian``: set by data-parallel
    training, turns this process's T × P Jacobian into the global one before a gradient
    method sees it (None in a single process, which leaves every path unchanged);
    ``sharded_gram``: set by sharded (FSDP) training, where no rank holds whole task gradients:
    called as ``sharded_gram(ctx, weights_from_gram)`` by a method whose weights depend on the
    Gram matrix alone, it takes the per-task gradient shards, sums the ranks' partial Gram
    matrices, writes the update Σ_i α_i ∇L_i into the shared parameters' gradients and
    returns (α, G) (mtlkit.train.fsdp; None elsewhere).
    """

    losses: Mapping[str, Tensor]
    stacked: Tensor
    model: nn.Module
    representation: Tensor | None = None
    loss_scale: float = 1.0
    reduce_jacobian: Callable[[Tensor], Tensor] | None = None
    sharded_gram: (
        Callable[[StepContext, Callable[[Tensor], Tensor]], tuple[Tensor, Tensor]] | None
    ) = None


class Weighting(ABC):
    """Base class of every loss-balancing method (see the module docstring)."""

    stateful: ClassVar[bool] = False
    #: attribute name → the state it holds (see :class:`StateField`); a class lists its own
    #: fields, and those of its bases are merged in when the class is created
    state_fields: ClassVar[Mapping[str, StateField]] = {}
    #: the task weights are fixed hyper-parameters (a search space for ``mtlkit tune``)
    static_weights: ClassVar[bool] = False
    #: the ``weights`` option (task → α) is where a config's task weights go
    takes_task_weights: ClassVar[bool] = False
    #: a short name for logs and test ids; set by subclasses
    name: ClassVar[str] = "weighting"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, StateField] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("state_fields", {}))
        cls.state_fields = merged

    def __init__(self) -> None:
        self.tasks: list[str] | None = None
        for name, spec in self.state_fields.items():
            if spec.kind == "parameter":
                setattr(self, name, None)
            elif spec.kind not in ("generator", "method"):  # created by the constructor
                setattr(self, name, spec.initial())

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

        The losses are checked and stacked in task order and :meth:`step` does the method's
        work. A ``None`` loss marks a task absent from this step (see the module docstring):
        the step then runs on the present tasks only, inside :meth:`restrict`; absent tasks
        get weight 0 in the record, and a step with no task present does nothing.

        ``representation`` is the shared representation the losses were computed from, for
        methods with ``needs_representation``. ``loss_scale`` multiplies the gradients that are
        written (for fp16 gradient scaling); the method's decisions use the unscaled losses.
        """
        if not isinstance(losses, Mapping) or all(v is not None for v in losses.values()):
            complete = cast("Mapping[str, Tensor]", losses)
            return self._full_step(complete, model, representation, loss_scale)
        self.bind(list(losses))
        present = {t: v for t, v in losses.items() if v is not None}
        absent = [t for t, v in losses.items() if v is None]
        if not present:
            return StepRecord(weights=dict.fromkeys(losses, 0.0), extra={"absent_tasks": 1.0})
        with self.restrict(list(present)):
            record = self._full_step(present, model, representation, loss_scale)
        record.weights.update(dict.fromkeys(absent, 0.0))
        record.extra["absent_tasks"] = float(len(absent))
        return record

    def _full_step(
        self,
        losses: Mapping[str, Tensor],
        model: nn.Module,
        representation: Tensor | None,
        loss_scale: float,
    ) -> StepRecord:
        stacked = self.stack_losses(losses)
        ctx = StepContext(losses, stacked, model, representation, loss_scale)
        return self.step(ctx)

    @abstractmethod
    def step(self, ctx: StepContext, /) -> StepRecord:
        """The method's step with every bound task present (see :class:`StepContext`).
        Subclasses implement this, not :meth:`backward`."""

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

    @property
    def jacobian_mode(self) -> str | None:
        """Where the method takes per-task gradients (``"shared"``, ``"last_shared"``,
        ``"representation"``); None for a loss-based method (one backward pass)."""
        return None

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

        Each field declared with ``axes`` is sliced to the present tasks on entry; on a normal
        exit the new values are written back into their entries, and the absent tasks'
        entries are left as they were (learned per-task parameters are sliced
        differentiably, so only the present entries receive a gradient). On an error the state
        is restored unchanged. Nested methods (fields of kind ``"method"``) are restricted too.
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
        per_task = {n: s for n, s in self.state_fields.items() if s.axes is not None}
        saved = {name: getattr(self, name) for name in per_task}
        for name, spec in per_task.items():
            assert spec.axes is not None
            setattr(self, name, take(saved[name], spec.axes, idx))
        self.tasks = [full[i] for i in idx]
        ok = False
        try:
            with ExitStack() as parts:
                for name, spec in self.state_fields.items():
                    if spec.kind == "method":
                        parts.enter_context(getattr(self, name).restrict(present))
                yield
            ok = True
        finally:
            self.tasks = full
            for name, spec in per_task.items():
                new = getattr(self, name)
                kept = put(saved[name], new, spec, idx, len(full)) if ok else saved[name]
                setattr(self, name, kept)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:  # noqa: B027
        """Hook: called by training loops after each epoch with each task's mean training loss
        (methods such as DWA use it)."""

    def parameters(self) -> list[nn.Parameter]:
        """The method's own learnable parameters, to be optimised with the model's: its
        fields of kind ``"parameter"``, then those of its nested methods."""
        params: list[nn.Parameter] = []
        for name, spec in self.state_fields.items():
            value = getattr(self, name)
            if spec.kind == "method":
                params.extend(value.parameters())
            elif spec.kind == "parameter":
                if value is None:
                    raise ConfigError(
                        f"{self}: its '{spec.key_of(name)}' are created per task; call "
                        "bind(task_names) before parameters() so the optimiser gets them"
                    )
                params.append(value)
        return params

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The method's state: JSON-ready values and tensors (saved with checkpoints)."""
        state: dict[str, Any] = {"tasks": self.tasks}
        for name, spec in self.state_fields.items():
            if spec.saved:
                state[spec.key_of(name)] = spec.save(getattr(self, name))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. A field missing from ``state`` keeps its
        value after :meth:`reset`; a field of the wrong kind or shape is a ConfigError that
        names the method and the field."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"{self}: a state dict must be a mapping, got {state!r}")
        self.reset()
        tasks = state.get("tasks")
        if tasks is not None:
            self.bind(tasks)
        for name, spec in self.state_fields.items():
            key = spec.key_of(name)
            if spec.saved and key in state:
                spec.load(self, name, state[key])

    def reset(self) -> None:
        """Forget all state gathered during training (and the task order)."""
        self.tasks = None
        for name, spec in self.state_fields.items():
            spec.reset(self, name)

    def to(self, device: torch.device | str) -> Self:
        """Move the method's tensors to ``device`` (parameters in place, so an optimiser keeps
        them); state the method keeps on the CPU (``cpu64`` fields, generators) stays."""
        for name, spec in self.state_fields.items():
            spec.move(self, name, device)
        return self

    # ------------------------------------------------------------------ helpers

    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The losses as a vector in task order, after checking each is a finite scalar."""
        if not isinstance(losses, Mapping) or not losses:
            raise TaskDataError(f"{self}: losses must be a non-empty dict of task → scalar loss")
        for task, loss in losses.items():
            if loss is None:
                raise TaskDataError(
                    f"task '{task}': loss is None (an absent task) inside {self}'s step; "
                    "absent tasks are handled by backward()"
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

    def step(self, ctx: StepContext, /) -> StepRecord:
        total, w = self.combine(ctx.stacked)
        (total * ctx.loss_scale).backward()
        assert self.tasks is not None
        return StepRecord(weights=dict(zip(self.tasks, w.detach().tolist(), strict=True)))


def get(name: str, /, **params: Any) -> Weighting:
    """A weighting method by registered name, with its hyper-parameters.

    >>> get("static", weights={"a": 2.0, "b": 1.0})
    Static(weights={'a': 2.0, 'b': 1.0})
    """
    method: Weighting = WEIGHTINGS.build(name, **params)
    return method


def available() -> list[str]:
    """The registered method names."""
    return WEIGHTINGS.names()
