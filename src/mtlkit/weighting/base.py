"""The loss-balancing interface and its registry.

A weighting method turns ``dict[task_name, loss]`` into gradients on a model's parameters::

    method = mtlkit.weighting.get("ew")
    record = method.backward(losses, model)   # fills .grad
    optimizer.step()

It works in any training loop, on any module; the Trainer calls nothing else. ``backward`` returns a
:class:`StepRecord` with what the method decided (task weights, and for gradient methods the
pairwise cosines and norms of the task gradients) for logging.

In your own loop (the one place that lists what a loop owes a method):

- the model: ``backward(losses, model)`` with a model that declares ``shared_parameters()``,
  or, for any module, ``backward(losses, shared_params=trunk)`` or
  ``backward(losses, representation=features)``; loss-based methods need neither;
- binding: the first ``backward`` binds the method to the tasks' names; call
  ``method.bind(names)`` yourself only to get :meth:`~Weighting.parameters` earlier;
- learnable parameters (UW's log-variances; empty for most methods): put
  ``method.bind(names).parameters()`` in an optimiser that steps; a method whose parameters
  are in no optimiser that stepped warns once (:class:`MethodParametersWarning`);
- the epoch hook: call ``method.on_epoch_end(epoch, mean_losses)`` after each epoch with each
  task's mean training loss (DWA and STCH use it; for the others it does nothing);
- checkpoints: save ``method.state_dict()`` and restore it with ``load_state_dict``.

The Trainer does all of this.

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

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, cast

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry
from mtlkit.weighting._state import StateField, put, take
from mtlkit.weighting._watch import parameters_left_behind, watch

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")

__all__ = [
    "WEIGHTINGS",
    "LossWeighting",
    "MethodParametersWarning",
    "StateField",
    "StepContext",
    "StepRecord",
    "Weighting",
    "Wrapper",
    "available",
    "for_tasks",
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
    returns (α, G) (mtlkit.train.fsdp; None elsewhere); ``global_jacobian``: set by data-parallel
    training in place of ``reduce_jacobian``, called as ``global_jacobian(losses, inputs,
    representation, head_rows)`` where a method would call ``task_jacobian``: it takes the
    Jacobian and reduces it across processes, overlapping the two (mtlkit.train.distributed).

    The model-free form of :meth:`Weighting.backward` fills the rest (``model`` is then None):
    ``shared_params``, the shared parameters the caller named; ``task_params``, the
    task-specific ones (None: every other parameter the losses reach); ``shared_module``, the
    module that holds the shared parameters when the caller gave one (the gradient engine
    hooks its layers for the fast Gramian path).
    """

    losses: Mapping[str, Tensor]
    stacked: Tensor
    model: nn.Module | None
    representation: Tensor | None = None
    loss_scale: float = 1.0
    reduce_jacobian: Callable[[Tensor], Tensor] | None = None
    shared_params: tuple[Tensor, ...] | None = None
    task_params: tuple[Tensor, ...] | None = None
    shared_module: nn.Module | None = None

    sharded_gram: (
        Callable[[StepContext, Callable[[Tensor], Tensor]], tuple[Tensor, Tensor]] | None
    ) = None
    global_jacobian: (
        Callable[[Tensor, Sequence[Tensor], Tensor | None, Tensor | None], Tensor] | None
    ) = None


class MethodParametersWarning(UserWarning):
    """A method's own learnable parameters are in no optimiser that steps (given once)."""


@dataclass(frozen=True)
class _Parts:
    """What :meth:`Weighting.backward` was told about the parameters (checked)."""

    model: nn.Module | None
    shared: tuple[Tensor, ...] | None
    task: tuple[Tensor, ...] | None
    shared_module: nn.Module | None

    @classmethod
    def of(
        cls,
        method: Weighting,
        model: object,
        shared_params: nn.Module | Iterable[Tensor] | None,
        task_params: Iterable[Tensor] | None,
    ) -> _Parts:
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(
                f"{method}: backward(losses, model): model must be an nn.Module, got "
                f"{type(model).__name__}; pass parameters as shared_params= instead"
            )
        module: nn.Module | None = None
        shared: tuple[Tensor, ...] | None = None
        if isinstance(shared_params, nn.Module):
            module = shared_params
            shared = tuple(module.parameters())
        elif shared_params is not None:
            shared = _tensors(method, "shared_params", shared_params)
        task = None if task_params is None else _tensors(method, "task_params", task_params)
        return cls(model, shared, task, module)


def _tensors(method: Weighting, option: str, values: Iterable[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(values, Tensor):
        return (values,)
    items = tuple(values)
    bad = sorted({type(v).__name__ for v in items if not isinstance(v, Tensor)})
    if bad:
        raise ConfigError(
            f"{method}: option '{option}' must be a module or an iterable of parameters, "
            f"got items of type {', '.join(bad)}"
        )
    return items


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
        model: nn.Module | None = None,
        *,
        shared_params: nn.Module | Iterable[Tensor] | None = None,
        task_params: Iterable[Tensor] | None = None,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord:
        """Fill ``.grad`` of the parameters the task ``losses`` reach.

        Two forms, with the same result:

        - ``backward(losses, model)``: a model that declares ``shared_parameters()`` (every
          :class:`~mtlkit.nn.MTLModel` does); its other trainable parameters are task-specific;
        - model-free, for any module: ``backward(losses, shared_params=trunk)`` (a module or an
          iterable of parameters), or ``backward(losses, representation=features)``, the
          shared representation (TorchJD's *features*): its graph gives the shared
          parameters. ``task_params`` names the task-specific parameters; by default they are
          every other trainable parameter the losses reach. Loss-based methods need neither
          (one backward pass fills every gradient); gradient-based methods need one of them.
          Shared parameters found from the representation's graph come in the graph's order
          (which matters only to GradDrop's random draws, one per coordinate).

        The losses are checked and stacked in task order and :meth:`step` does the method's
        work. The first call binds the method to the tasks' names (:meth:`bind`). A ``None``
        loss marks a task absent from this step (see the module docstring): the step then runs
        on the present tasks only, inside :meth:`restrict`; absent tasks get weight 0 in the
        record, and a step with no task present does nothing.

        ``representation`` is the shared representation the losses were computed from, for
        methods with ``needs_representation`` (and faster for every gradient method).
        ``loss_scale`` multiplies the gradients that are written (for fp16 gradient scaling);
        the method's decisions use the unscaled losses.

        A method with learnable parameters (:meth:`parameters`, UW's log-variances) warns
        once (:class:`MethodParametersWarning`) when optimisers step between two calls and
        none of them holds those parameters.
        """
        self._check_parameters_stepped()
        parts = _Parts.of(self, model, shared_params, task_params)
        try:
            if not isinstance(losses, Mapping) or all(v is not None for v in losses.values()):
                complete = cast("Mapping[str, Tensor]", losses)
                return self._full_step(complete, parts, representation, loss_scale)
            self.bind(list(losses))
            present = {t: v for t, v in losses.items() if v is not None}
            absent = [t for t, v in losses.items() if v is None]
            if not present:
                return StepRecord(weights=dict.fromkeys(losses, 0.0), extra={"absent_tasks": 1.0})
            with self.restrict(list(present)):
                record = self._full_step(present, parts, representation, loss_scale)
            record.weights.update(dict.fromkeys(absent, 0.0))
            record.extra["absent_tasks"] = float(len(absent))
            return record
        finally:
            self._watch_parameters()

    def _full_step(
        self,
        losses: Mapping[str, Tensor],
        parts: _Parts,
        representation: Tensor | None,
        loss_scale: float,
    ) -> StepRecord:
        stacked = self.stack_losses(losses)
        ctx = StepContext(
            losses,
            stacked,
            parts.model,
            representation,
            loss_scale,
            shared_params=parts.shared,
            task_params=parts.task,
            shared_module=parts.shared_module,
        )
        return self.step(ctx)

    # ------------------------------------------------------------------ own parameters

    def _watch_parameters(self) -> None:
        """After a step: watch the optimisers for this method's own parameters."""
        if self.tasks is not None and any(p.requires_grad for p in self._own_parameters()):
            watch(self)

    def _check_parameters_stepped(self) -> None:
        """Before a step: warn once if optimisers stepped since the last one without them."""
        if parameters_left_behind(self):
            names = ", ".join(
                spec.key_of(n) for n, spec in self.state_fields.items() if spec.kind == "parameter"
            )
            warnings.warn(
                f"{self}: its own learnable parameters ({names or 'parameters()'}) are in no "
                "optimiser that "
                "stepped since the last backward, so they never change; add them: "
                "optimizer.add_param_group({'params': method.parameters()}), or build the "
                "optimiser from [*model.parameters(), *method.parameters()] after "
                "method.bind(task_names)",
                MethodParametersWarning,
                stacklevel=3,
            )

    def _own_parameters(self) -> list[nn.Parameter]:
        """:meth:`parameters`, or none while they are not created yet (before bind)."""
        try:
            return self.parameters()
        except ConfigError:
            return []

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

    def bind(self, tasks: Sequence[str]) -> Self:
        """Fix the task order, and return the method. Called by :meth:`backward` on first use;
        later calls must name the same tasks. Call it yourself before :meth:`parameters` when
        the method has learnable parameters (they are created per task)::

            optimizer = torch.optim.Adam([*model.parameters(), *uw.bind(names).parameters()])
        """
        if self.tasks is not None and tasks == self.tasks:  # every step: the same list
            return self
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
        return self

    def use_task_weights(self, weights: Mapping[str, float]) -> None:
        """Take the static task weights α of the tasks (``Task.weight``); only methods with
        ``takes_task_weights`` accept them, the others raise (see :func:`for_tasks`)."""
        raise ConfigError(
            f"task weights {dict(weights)} are only used by 'weighting: static' (or a method "
            f"with takes_task_weights); {self} sets its own weights"
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
                        "method.bind(task_names) before parameters() so the optimiser gets "
                        "them (method.bind(names).parameters())"
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


class Wrapper(Weighting):
    """A method that runs another one: what the training loop reads of it (representation,
    all tasks, Jacobian mode) is the wrapped method's, :attr:`wrapped`."""

    @property
    @abstractmethod
    def wrapped(self) -> Weighting:
        """The method whose capabilities this one reports."""

    @property
    def needs_representation(self) -> bool:
        return self.wrapped.needs_representation

    @property
    def uses_representation(self) -> bool:
        return self.wrapped.uses_representation

    @property
    def needs_all_tasks(self) -> bool:
        return self.wrapped.needs_all_tasks

    @property
    def jacobian_mode(self) -> str | None:
        return self.wrapped.jacobian_mode


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
        backward_scaled(total, ctx.loss_scale)
        assert self.tasks is not None
        return StepRecord(weights=dict(zip(self.tasks, w.detach().tolist(), strict=True)))


def backward_scaled(total: Tensor, scale: float) -> None:
    """Back-propagate ``scale · total`` (the loss scale of fp16 training), without the
    multiplication, a graph node more, at scale 1."""
    (total if scale == 1.0 else total * scale).backward()


def for_tasks(method: Weighting, tasks: Iterable[Any]) -> Weighting:
    """``method``, given the static weights of ``tasks`` (their ``weight`` field), and bound
    to their names: a task weight other than 1 is never silently ignored.

    A method with ``takes_task_weights`` (static) takes them as its α (a weight it was given
    for the same task must agree); any other method raises a ConfigError naming the tasks.

    >>> from mtlkit.tasks import Task
    >>> for_tasks(get("static"), [Task("a", "regression", weight=2.0), Task("b", "regression")])
    Static(weights={'a': 2.0})
    """
    tasks = list(tasks)
    weighted = {t.name: float(t.weight) for t in tasks if float(t.weight) != 1.0}
    if weighted:
        method.use_task_weights(weighted)
    return method.bind([t.name for t in tasks])


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
