"""The one interface through which training reports what it does: a :class:`Callback`.

The Trainer calls, in this order::

    on_fit_start(trainer)                 # before the first step of this fit() call
    on_epoch_start(trainer, epoch, steps) # epoch is 1-based; steps: its length (0: unknown)
    on_step_end(trainer, step)            # after every optimisation step (a StepLog)
    on_epoch_end(trainer, record)         # the epoch's record, as written to metrics.jsonl
    on_fit_end(trainer, result)           # a FitResult, also after an early stop

Every method is optional (the base class does nothing). The run folder's JSONL file,
TensorBoard, Weights & Biases, MLflow and the progress bar are callbacks like any user's, so a
user callback sees exactly what they log. A plain function ``f(trainer, record)`` given in
``Trainer(callbacks=...)`` is called as ``on_epoch_end``. Under data-parallel training the
loggers and the progress bar run on rank 0 only; user callbacks run on every rank.

Example: stop the run once task ``cls`` reaches an accuracy of 0.9 (the epoch's record holds
the validation metrics under ``val``)::

    class StopAt(Callback):
        def on_epoch_end(self, trainer, record):
            if record.get("val", {}).get("cls", {}).get("accuracy", 0.0) >= 0.9:
                trainer.stop = True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mtlkit.weighting import StepRecord

if TYPE_CHECKING:
    from mtlkit.train.trainer import FitResult, Trainer


@dataclass(frozen=True)
class StepLog:
    """One optimisation step, as callbacks see it.

    ``epoch`` (1-based, the epoch in progress) and ``step`` (global, 1-based); ``losses``: each
    present task's loss; ``record``: what the weighting method decided (task weights; gradient
    norms and cosines when the method computes them); ``lr``: the first parameter group's
    learning rate; ``samples``: the batch size when it can be read off the batch (else 0);
    ``seconds``: wall time since the previous step ended (data loading included).
    """

    epoch: int
    step: int
    losses: Mapping[str, float]
    record: StepRecord
    lr: float
    samples: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Flat scalars: ``loss/<task>``, ``weight/<task>``, ``grad_norm/<task>``,
        ``cosine/<a>/<b>``, the method's own values, ``lr`` and ``steps_per_second`` /
        ``samples_per_second``."""
        out = {f"loss/{t}": float(v) for t, v in self.losses.items()}
        out.update(
            {k: float(v) for k, v in self.record.to_log().items() if isinstance(v, int | float)}
        )
        out["lr"] = float(self.lr)
        if self.seconds > 0:
            out["steps_per_second"] = 1.0 / self.seconds
            if self.samples:
                out["samples_per_second"] = self.samples / self.seconds
        return out


class Callback:
    """Hooks into :meth:`mtlkit.train.Trainer.fit` (see the module docstring)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of a ``fit`` call (after a resume restored the state)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        """Before epoch ``epoch`` (1-based) of ``steps`` steps (0 when the length is unknown)."""

    def on_step_end(self, trainer: Trainer, step: StepLog) -> None:
        """After each optimisation step."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After an epoch's validation, model selection and checkpoint; ``record`` is the
        ``type: epoch`` record of ``metrics.jsonl``. Setting ``trainer.stop = True`` ends the
        fit after this epoch."""

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        """When ``fit`` returns (also after an early stop or ``stop_after``). Not called when
        training raises; :meth:`close` is."""

    def close(self) -> None:
        """Release files and connections; called once at the end of ``fit``, even on error."""


class EpochFunction(Callback):
    """A plain function ``f(trainer, record)`` called at each epoch's end."""

    def __init__(self, function: Callable[[Trainer, dict[str, Any]], None]) -> None:
        self.function = function

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.function(trainer, record)


def as_callback(item: Callback | Callable[[Trainer, dict[str, Any]], None]) -> Callback:
    """A :class:`Callback` as is; a plain function as an ``on_epoch_end`` callback."""
    return item if isinstance(item, Callback) else EpochFunction(item)


def batch_size(batch: Any) -> int:
    """The leading size of the first tensor found in a batch's inputs (0 if none): a joint
    batch ``(inputs, targets)`` or a multi-input step ``{task: (inputs, targets)}`` (summed)."""
    import torch

    if isinstance(batch, Mapping):
        return sum(batch_size(b) for b in batch.values())
    inputs = batch[0] if isinstance(batch, tuple | list) and batch else batch
    stack = [inputs]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            return int(item.shape[0]) if item.dim() else 0
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, tuple | list):
            stack.extend(item)
    return 0
