"""Balance tasks inside a PyTorch Lightning module (extra ``lightning``).

:class:`MTLModule` is a ``LightningModule`` under manual optimisation whose training step
hands a dict of task losses to any mtlkit method::

    class Model(MTLModule):
        def __init__(self):
            super().__init__(mtlkit.weighting.get("uw"), tasks=["a", "b"])
            self.trunk, self.heads = ..., ...

        def task_losses(self, batch):            # dict task → loss (or (losses, features))
            ...

        def shared_parameters(self):             # what gradient methods balance on
            return self.trunk

        def configure_optimizers(self):          # self.parameters() holds the method's own
            return torch.optim.Adam(self.parameters(), lr=1e-3)

What it does for the method (the list in :mod:`mtlkit.weighting.base`): binds it to the task
names at construction; registers its learnable parameters (UW's log-variances) as this
module's parameters, so ``self.parameters()`` gives them to the optimiser and the Lightning
checkpoint saves them; saves and restores the rest of its state (running weights, histories,
random generators) in the checkpoint under ``"mtlkit_method"``; calls
``method.on_epoch_end(epoch, mean_losses)`` after each training epoch; logs each task's loss
and weight.

The backward pass is the method's (``method.backward``: one backward of the combined loss, or
the per-task gradients of the shared parameters). The training step runs inside Lightning's
precision context, so ``32-true`` and ``bf16-mixed`` work as with the Trainer; ``16-mixed``,
whose gradient scaler needs ``manual_backward`` of one loss, is refused with a clear error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.weighting import StepRecord, Weighting

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the extra
    raise MissingExtraError("lightning", "lightning", "mtlkit.integrations.lightning") from None

CHECKPOINT_KEY = "mtlkit_method"


class MTLModule(pl.LightningModule, ABC):
    """A LightningModule whose training step balances task losses with ``method`` (module
    docstring). Subclasses implement :meth:`task_losses` and ``configure_optimizers``, and
    :meth:`shared_parameters` for gradient-based methods."""

    def __init__(self, method: Weighting, tasks: Sequence[str]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.method = method.bind(list(tasks))
        self.method_parameters = nn.ParameterList(self.method.parameters())
        self._epoch_losses: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ to implement

    @abstractmethod
    def task_losses(self, batch: Any) -> Mapping[str, Tensor | None] | tuple[Any, Tensor]:
        """The batch's loss per task (``None`` for a task without labels), or
        ``(losses, features)`` with the shared representation (representation mode)."""

    def shared_parameters(self) -> nn.Module | Iterable[Tensor] | None:
        """The shared part (a module or parameters) gradient-based methods balance on; None
        (the default) suits loss-based methods or ``(losses, features)``."""
        return None

    # ------------------------------------------------------------------ the step

    def balance(
        self, losses: Mapping[str, Tensor | None], features: Tensor | None = None
    ) -> StepRecord:
        """Fill the gradients of the task ``losses`` with the method (instead of
        ``manual_backward``); call it between ``zero_grad`` and ``step``."""
        precision = str(getattr(self.trainer, "precision", "32-true"))
        if precision.startswith("16"):
            raise ConfigError(
                f"mtlkit.integrations.lightning: precision '{precision}' scales one loss in "
                "manual_backward; mtlkit methods need '32-true' or 'bf16-mixed'"
            )
        shared = self.shared_parameters()
        kwargs: dict[str, Any] = {}
        if shared is not None:
            kwargs["shared_params"] = shared
        if features is not None:
            kwargs["representation"] = features
        return self.method.backward(losses, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        made = self.task_losses(batch)
        losses, features = made if isinstance(made, tuple) else (made, None)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        record = self.balance(losses, features)
        for opt in optimizers:
            opt.step()
        schedulers = self.lr_schedulers()
        if schedulers is not None and self.trainer.is_last_batch:
            for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
                sched.step()
        present = {t: loss.detach() for t, loss in losses.items() if loss is not None}
        for task, loss in present.items():
            self._epoch_losses.setdefault(task, []).append(float(loss))
        logs = {f"loss/{t}": loss for t, loss in present.items()}
        logs.update({f"weight/{t}": float(w) for t, w in record.weights.items()})
        self.log_dict(logs, on_step=True, on_epoch=True)
        return torch.stack(list(present.values())).sum() if present else torch.zeros(())

    def on_train_epoch_end(self) -> None:
        means = {t: sum(v) / len(v) for t, v in self._epoch_losses.items() if v}
        self._epoch_losses = {}
        self.method.on_epoch_end(self.current_epoch, means)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.method.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ConfigError(
                f"mtlkit.integrations.lightning: the checkpoint has no '{CHECKPOINT_KEY}' "
                "(it was not saved by an MTLModule)"
            )
        self.method.load_state_dict(state)
        self.method_parameters = nn.ParameterList(self.method.parameters())


__all__ = ["CHECKPOINT_KEY", "MTLModule"]
