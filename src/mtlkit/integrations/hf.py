"""Balance tasks in the Hugging Face ``Trainer`` (extra ``nlp``).

:class:`MTLTrainer` is a ``transformers.Trainer`` whose training step hands a dict of task
losses to any mtlkit method instead of calling backward on one loss::

    trainer = MTLTrainer(
        model=model,                        # forward(**batch) returns {"losses": {task: loss}, ...}
        args=TrainingArguments(...),
        train_dataset=...,
        method=mtlkit.weighting.get("pcgrad"),
        tasks=["topic", "length"],
        shared_params=lambda model: model.encoder,   # for gradient-based methods
    )
    trainer.train()

The task losses come from :meth:`MTLTrainer.task_losses` (by default the model output's
``"losses"``, a dict task → loss; override it to compute them from logits). What the Trainer
does for the method (the list in :mod:`mtlkit.weighting.base`): binds it to the tasks; puts
its learnable parameters (UW's log-variances) in the optimiser as a parameter group of their
own (no weight decay); saves its state as ``mtlkit_method.pt`` in every checkpoint folder and
restores it with ``train(resume_from_checkpoint=...)``; calls ``method.on_epoch_end`` with each
task's mean training loss after every epoch. The logged ``loss`` is the sum of the task
losses; evaluation reports it too.

Limits, stated as errors: gradient accumulation (``gradient_accumulation_steps > 1``) and
``fp16`` (whose gradient scaler needs one loss) are refused; fp32 and ``bf16`` work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, MissingExtraError
from mtlkit.weighting import Weighting

try:
    import transformers
except ImportError:  # pragma: no cover - depends on the extra
    raise MissingExtraError("transformers", "nlp", "mtlkit.integrations.hf") from None

STATE_FILE = "mtlkit_method.pt"

SharedParams = Callable[[nn.Module], nn.Module | Iterable[Tensor]]


class _EpochHook(transformers.TrainerCallback):
    def __init__(self, trainer: MTLTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._end_epoch(round(state.epoch or 0) - 1)


class MTLTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that balances task losses with ``method`` (module
    docstring). ``shared_params(model)`` gives the shared part for gradient-based methods."""

    def __init__(
        self,
        *args: Any,
        method: Weighting,
        tasks: Sequence[str],
        shared_params: SharedParams | None = None,
        **kwargs: Any,
    ) -> None:
        self.method = method.bind(list(tasks))
        self.shared_params = shared_params
        self._epoch_losses: dict[str, list[float]] = {}
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ConfigError(
                "mtlkit.integrations.hf: gradient_accumulation_steps must be 1 (each step's "
                "task gradients are balanced once)"
            )
        if self.args.fp16:
            raise ConfigError(
                "mtlkit.integrations.hf: fp16 scales one loss; use bf16 or fp32 with mtlkit"
            )
        self.method.to(self.args.device)
        self.add_callback(_EpochHook(self))

    def task_losses(self, model: nn.Module, inputs: Mapping[str, Any]) -> Mapping[str, Tensor]:
        """Each task's loss on the batch ``inputs``: the model output's ``"losses"``."""
        outputs = model(**inputs)
        losses = outputs.get("losses") if isinstance(outputs, Mapping) else None
        if losses is None:
            losses = getattr(outputs, "losses", None)
        if not isinstance(losses, Mapping):
            raise ConfigError(
                "mtlkit.integrations.hf: the model's output has no 'losses' dict (task → "
                "loss); return one, or override MTLTrainer.task_losses"
            )
        return losses

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            losses = self.task_losses(model, inputs)
        for param in self.method.parameters():  # the Trainer zeroes the model's only
            param.grad = None
        kwargs: dict[str, Any] = {}
        if self.shared_params is not None:
            kwargs["shared_params"] = self.shared_params(self.accelerator.unwrap_model(model))
        self.method.backward(losses, **kwargs)
        present = [loss.detach() for loss in losses.values() if loss is not None]
        for task, loss in losses.items():
            if loss is not None:
                self._epoch_losses.setdefault(task, []).append(float(loss))
        return torch.stack(present).sum() if present else torch.zeros((), device=self.args.device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The sum of the task losses (what evaluation reports as ``eval_loss``)."""
        losses = self.task_losses(model, inputs)
        total = torch.stack([v for v in losses.values() if v is not None]).sum()
        return (total, {"losses": losses}) if return_outputs else total

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        optimizer = (
            super().create_optimizer(model) if model is not None else super().create_optimizer()
        )
        params = self.method.parameters()
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params and not any(id(p) in held for p in params):
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _end_epoch(self, epoch: int) -> None:
        means = {t: sum(v) / len(v) for t, v in self._epoch_losses.items() if v}
        self._epoch_losses = {}
        self.method.on_epoch_end(epoch, means)

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None
    ) -> None:
        super()._save(output_dir, state_dict)
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        torch.save(self.method.state_dict(), folder / STATE_FILE)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: no mtlkit method state in this checkpoint")
        self.method.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.method.to(self.args.device)


__all__ = ["STATE_FILE", "MTLTrainer"]
