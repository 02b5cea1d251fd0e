"""The model contract every architecture follows, and the architecture registry.

A multi-task model maps a batch of inputs to ``dict[task_name, output]`` and tells which of its
parameters are shared (:meth:`MTLModel.shared_parameters`) and which belong to each task
(:meth:`MTLModel.task_parameters`). Loss-balancing methods rely on nothing else; gradient
methods that work on the shared representation also use
:meth:`MTLModel.forward_with_representation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.heads import HEADS
from mtlkit.registry import Registry
from mtlkit.tasks import Task

ARCHITECTURES: Registry[type[MTLModel]] = Registry("architecture")


class MTLModel(nn.Module, ABC):
    """Base class of multi-task models.

    Subclasses implement :meth:`forward`, :meth:`shared_parameters` and
    :meth:`task_parameters`. Every trainable parameter must be either shared or owned by
    exactly one task; :meth:`check_partition` verifies it.
    """

    task_names: list[str]

    @abstractmethod
    def forward(self, inputs: Any) -> dict[str, Tensor]:
        """The output of every task: ``dict[task_name, output]``."""

    @abstractmethod
    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters more than one task's loss reaches."""

    @abstractmethod
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The trainable parameters only ``task``'s loss reaches."""

    def forward_with_representation(self, inputs: Any) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs plus the shared representation every head reads (for feature-level
        gradient methods). Architectures without a single shared representation raise."""
        raise ConfigError(
            f"architecture {type(self).__name__} has no single shared representation; "
            "use a gradient method with jacobian: shared (the default)"
        )

    def regularization(self) -> Tensor:
        """An extra loss term the training loop adds to the task losses (0 by default).

        Architectures with a regulariser of their own (DSelect-k's entropy term) override it;
        the value refers to the last forward pass. It never depends on the shared
        representation's graph, so ``model.regularization().backward()`` may run before or
        after the weighting method's backward.
        """
        first = next(iter(self.parameters()), None)
        return torch.zeros((), device=first.device if first is not None else None)

    @property
    def has_representation(self) -> bool:
        """Whether :meth:`forward_with_representation` is implemented: every task's output is
        computed from one shared tensor, and the losses reach the shared parameters only
        through it."""
        return type(self).forward_with_representation is not MTLModel.forward_with_representation

    def check_partition(self) -> None:
        """Raise when a trainable parameter is neither shared nor owned by exactly one task."""
        owner: dict[int, str] = {id(p): "shared" for p in self.shared_parameters()}
        for task in self.task_names:
            for p in self.task_parameters(task):
                if id(p) in owner:
                    raise ConfigError(
                        f"{type(self).__name__}: a parameter of task '{task}' is also "
                        f"claimed by {owner[id(p)]}"
                    )
                owner[id(p)] = f"task '{task}'"
        missing = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in owner]
        if missing:
            raise ConfigError(
                f"{type(self).__name__}: parameters neither shared nor task-owned: {missing[:5]}"
            )


def build_head(task: Task, in_features: int) -> nn.Module:
    """The head named by ``task.head``, sized from the representation and the task."""
    try:
        return HEADS.build(task.head, in_features, task.num_outputs, **task.head_params)
    except ConfigError as err:
        raise ConfigError(f"task '{task.name}': field 'head': {err}") from None


def build_model(
    architecture: str, encoder: nn.Module, tasks: Sequence[Task], **params: Any
) -> MTLModel:
    """Build a registered architecture around ``encoder`` for ``tasks``."""
    model = ARCHITECTURES.build(architecture, encoder, list(tasks), **params)
    model.check_partition()
    return model
