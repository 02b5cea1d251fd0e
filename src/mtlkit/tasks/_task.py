"""Tasks: what a multi-task model must learn, and how to check what it is given.

A :class:`Task` names one prediction problem: its kind (which fixes the head, the default loss
and the default metrics), its output size, its loss, its metrics and its static weight. Task
kinds are registered in :data:`TASK_KINDS`; each task family module of :mod:`mtlkit.tasks`
(tabular, tagging, dense, detection, language modelling) registers its own, and a user's new
kinds plug in the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.registry import Registry
from mtlkit.tasks.losses import IGNORE_INDEX, LABELLED_LOSSES, LOSSES, LossFn
from mtlkit.tasks.metrics import METRICS, Accumulator, Metric


@dataclass(frozen=True)
class TaskKind:
    """What a kind of task expects: loss and metrics by default, target dtype, output layout.

    ``integer_targets`` says whether targets are class indices (checked to lie in
    ``[0, num_outputs)`` or equal the ignore value ``-100``); otherwise they are floats.
    ``class_dim`` says whether the output has a class/channel dimension 1 that the target lacks.
    ``primary_metric`` is the one metric Δm compares by default (None: the first of
    ``metrics``); it should be the metric a user of the kind would report first.
    """

    name: str
    loss: str
    metrics: tuple[str, ...]
    integer_targets: bool
    class_dim: bool
    binary_targets: bool = False
    #: integer labels that mark a missing label (never range-checked)
    ignore_labels: tuple[int, ...] = (IGNORE_INDEX,)
    primary_metric: str | None = None

    @property
    def primary(self) -> str:
        """The kind's primary metric: ``primary_metric``, else the first default metric."""
        return self.primary_metric or self.metrics[0]

    def expected_output_shape(self, target: Tensor, num_outputs: int) -> tuple[int, ...]:
        """The head output shape that fits ``target``."""
        if self.class_dim:
            return (target.shape[0], num_outputs, *target.shape[1:])
        return tuple(target.shape)

    def output_fits(self, output: Tensor, target: Tensor, num_outputs: int) -> bool:
        """Whether a head output of ``output``'s shape fits ``target`` (kinds whose output
        size the target does not fix, such as detection maps, override this)."""
        if tuple(output.shape) == self.expected_output_shape(target, num_outputs):
            return True
        return (  # a regression-style output with a trailing singleton, (B, 1) for (B,)
            not self.class_dim
            and output.dim() == target.dim() + 1
            and output.shape[-1] == 1
            and tuple(output.shape[:-1]) == tuple(target.shape)
        )

    def describe_expected(self, target: Tensor, num_outputs: int) -> str:
        """The expected output shape, for error messages."""
        return str(self.expected_output_shape(target, num_outputs))


TASK_KINDS: Registry[TaskKind] = Registry("task kind")


@dataclass
class Task:
    """One task of a multi-task model.

    Args:
        name: unique name, the key of the task in outputs, targets and losses.
        kind: a registered task kind (``classification``, ``binary``, ``multilabel``,
            ``regression``, ...).
        num_outputs: number of classes (classification), labels (multi-label) or target
            dimensions (regression; 1 means a target of shape ``(B,)``).
        loss: a registered loss name or a callable ``(output, target) -> scalar``;
            the kind's default when omitted.
        metrics: registered metric names; the kind's defaults when omitted.
        weight: the static weight α in L = Σ α_i L_i.
        auxiliary: trained, but left out of model selection and of Δm.
        head: a registered head name, and ``head_params`` its options.
        primary: the metric Δm compares by default (one of ``metrics``); None: the kind's
            primary metric when the task reports it, else the task's first metric.
    """

    name: str
    kind: str
    num_outputs: int = 1
    loss: str | LossFn | None = None
    metrics: Sequence[str] | None = None
    weight: float = 1.0
    auxiliary: bool = False
    head: str = "linear"
    head_params: dict[str, Any] = field(default_factory=dict)
    primary: str | None = None

    def __post_init__(self) -> None:
        where = f"task '{self.name}'"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("a task needs a non-empty string name")
        self.spec: TaskKind = _lookup(TASK_KINDS, self.kind, f"{where}: field 'kind'")
        if self.num_outputs < 1:
            raise ConfigError(f"{where}: field 'num_outputs' must be ≥ 1, got {self.num_outputs}")
        if self.spec.class_dim and self.num_outputs < 2:
            raise ConfigError(f"{where}: a {self.kind} task needs num_outputs ≥ 2 classes")
        if not (self.weight >= 0.0 and self.weight < float("inf")):
            raise ConfigError(f"{where}: field 'weight' must be finite and ≥ 0, got {self.weight}")
        loss = self.loss if self.loss is not None else self.spec.loss
        self.loss_fn: LossFn = (
            loss if callable(loss) else _lookup(LOSSES, loss, f"{where}: field 'loss'")
        )
        #: the loss without its mask, for a target whose every entry is a valid label
        self.labelled_loss_fn: LossFn = self.loss_fn
        if isinstance(loss, str) and loss in LABELLED_LOSSES:
            self.labelled_loss_fn = LABELLED_LOSSES.lookup(loss)
        names = list(self.metrics) if self.metrics is not None else list(self.spec.metrics)
        self.metrics = names
        self.metric_fns: dict[str, Metric] = {
            m: _lookup(METRICS, m, f"{where}: field 'metrics'") for m in names
        }
        if self.primary is not None and self.primary not in names:
            raise ConfigError(
                f"{where}: field 'primary_metric' is '{self.primary}', which is not one of "
                f"the task's metrics ({', '.join(names) or 'none'})"
            )

    @property
    def primary_metric(self) -> str | None:
        """The metric Δm compares by default: ``primary`` when set, else the kind's primary
        metric when the task reports it, else the task's first metric (None: no metric)."""
        if self.primary is not None:
            return self.primary
        if not self.metrics:
            return None
        return self.spec.primary if self.spec.primary in self.metrics else self.metrics[0]

    # ------------------------------------------------------------------ checks at the boundary

    def check(self, output: Tensor, target: Tensor, *, labels: bool = True) -> None:
        """Raise :class:`TaskDataError` when ``output`` or ``target`` does not fit this task
        (``labels``: also check the label values, :meth:`check_labels`)."""
        where = f"task '{self.name}'"
        if not isinstance(target, Tensor):
            raise TaskDataError(f"{where}: target is a {type(target).__name__}, not a tensor")
        if not isinstance(output, Tensor):
            raise TaskDataError(f"{where}: head output is a {type(output).__name__}")
        if self.spec.integer_targets:
            if target.is_floating_point() or target.dtype == torch.bool:
                raise TaskDataError(
                    f"{where}: target dtype {target.dtype} is not an integer class index "
                    f"(a {self.kind} task needs int64 labels)"
                )
        elif not (target.is_floating_point() or target.dtype == torch.bool) and not (
            self.spec.binary_targets
        ):
            raise TaskDataError(
                f"{where}: target dtype {target.dtype} is not floating point "
                f"(a {self.kind} task needs float targets)"
            )
        if not output.is_floating_point():
            raise TaskDataError(f"{where}: head output dtype {output.dtype} is not floating point")
        if not self.spec.output_fits(output, target, self.num_outputs):
            expected = self.spec.describe_expected(target, self.num_outputs)
            raise TaskDataError(
                f"{where}: target shape {tuple(target.shape)} does not fit head output "
                f"{tuple(output.shape)} (expected output {expected})"
            )
        if labels:
            self.check_labels(target)

    def label_bounds(self, target: Tensor) -> tuple[Tensor, Tensor] | None:
        """The smallest and the largest label of an integer target (one reduction, no
        read-back), for :meth:`labels_plain`; None for other targets."""
        if not self.spec.integer_targets or self.spec.binary_targets or not target.numel():
            return None
        low, high = torch.aminmax(target)
        return low, high

    def labels_plain(self, low: int, high: int) -> bool:
        """Whether labels between ``low`` and ``high`` are all in range and none is an ignore
        value: then every entry is labelled and valid (:meth:`check_labels` passes and
        :meth:`label_mask` is all true); False says nothing (check those two)."""
        return (
            low >= 0
            and high < self.num_outputs
            and not any(low <= i <= high for i in self.spec.ignore_labels)
        )

    def check_labels(self, target: Tensor) -> None:
        """Raise :class:`TaskDataError` when a label of ``target`` is outside the task's
        classes (integer targets; ignore values aside) or a binary target is not 0 or 1."""
        where = f"task '{self.name}'"
        if self.spec.integer_targets and target.numel():
            # one reduction and one read-back per batch; the details only on an error
            outside = ((target < 0) | (target >= self.num_outputs)) & self.label_mask(target)
            if bool(outside.any()):
                valid = target[self.label_mask(target)]
                bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
                raise TaskDataError(
                    f"{where}: class label {bad} is out of range [0, {self.num_outputs}) "
                    f"(use {IGNORE_INDEX} for a missing label)"
                )
        if self.spec.binary_targets and target.numel():
            finite = target[torch.isfinite(target.float())].float()
            if finite.numel() and not bool(((finite == 0) | (finite == 1)).all()):
                raise TaskDataError(f"{where}: a {self.kind} target must hold only 0 and 1")

    def label_mask(self, target: Tensor) -> Tensor:
        """Which entries of ``target`` are labelled: not an ignore value (integer targets), not
        NaN (float targets). Losses and metrics average over these entries.

        >>> Task("digit", "classification", num_outputs=10).label_mask(torch.tensor([3, -100, 7]))
        tensor([ True, False,  True])
        >>> Task("price", "regression").label_mask(torch.tensor([1.5, float("nan")]))
        tensor([ True, False])
        """
        if self.spec.integer_targets:
            ignore = self.spec.ignore_labels
            if len(ignore) == 1:  # the usual case: one comparison, no tensor of labels
                return target != ignore[0]
            return ~torch.isin(target, torch.tensor(ignore, device=target.device))
        return ~torch.isnan(target.float())

    def compute_loss(
        self, output: Tensor, target: Tensor, check: bool = True, *, labelled: bool = False
    ) -> Tensor:
        """This task's loss on one batch, after checking shapes, dtypes and label range.
        ``labelled``: the caller knows every entry of ``target`` is a valid label
        (:meth:`labels_plain`), so the loss can skip its mask."""
        if check:
            self.check(output, target)
        loss = (self.labelled_loss_fn if labelled else self.loss_fn)(output, target)
        if loss.dim() != 0:
            raise TaskDataError(
                f"task '{self.name}': loss has shape {tuple(loss.shape)}, expected a scalar"
            )
        return loss

    def compute_metrics(self, output: Tensor, target: Tensor) -> dict[str, float]:
        """Every metric of this task over a whole split."""
        return {name: fn(output, target) for name, fn in self.metric_fns.items()}

    def accumulators(self) -> dict[str, Accumulator]:
        """A fresh accumulator per metric, to compute the metrics batch by batch
        (:meth:`Metric.accumulate`): ``update(output, target)`` each batch, then ``compute()``."""
        return {name: fn.accumulate() for name, fn in self.metric_fns.items()}


def _lookup(registry: Registry[Any], name: Any, where: str) -> Any:
    try:
        return registry.lookup(name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_task_names(tasks: Sequence[Task]) -> None:
    """Raise a ConfigError when task names repeat or no task is given."""
    if not tasks:
        raise ConfigError("no tasks: a multi-task model needs at least one task")
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ConfigError(f"task '{task.name}' is defined twice")
        seen.add(task.name)


def task_map(tasks: Sequence[Task]) -> dict[str, Task]:
    """Tasks keyed by name, after checking the names."""
    check_task_names(tasks)
    return {t.name: t for t in tasks}
