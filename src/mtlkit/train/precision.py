"""Numeric precision of a run: autocast for the forward pass, gradient scaling, the optimiser step.

Three modes, chosen from the Trainer's ``amp`` option by :meth:`Precision.from_amp`:

- full precision (``amp=False``): no autocast, no scaling;
- bf16 autocast (``"bf16"``, or ``True`` on the CPU): bf16 keeps fp32's exponent range, so
  gradients need no scaling;
- fp16 autocast with a :class:`torch.amp.GradScaler` (``"fp16"``, or ``True`` on CUDA): the
  losses' gradients are multiplied by the scaler's factor (``loss_scale``, passed to the
  weighting method's backward), unscaled before clipping, and a step whose gradients overflowed
  is skipped by the scaler. Gradient methods seed their per-task backward passes at that scale
  too, so that no task's gradient underflows in fp16, and unscale J and G in float32 before
  their solver (docs/weighting.md, "Mixed precision and torch.compile").

A step with any mode::

    scale = precision.loss_scale()                    # 1.0 without a scaler
    method.backward(losses, model, loss_scale=scale)
    precision.step(optimizer, model.parameters(), grad_clip)   # unscale, clip, step
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError

__all__ = ["Precision"]


class Precision:
    """The autocast dtype (None: full precision) and gradient scaler (None: none) of a run."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.device, self.dtype, self.scaler = device, dtype, scaler

    @classmethod
    def from_amp(cls, amp: bool | str | None, device: torch.device) -> Precision:
        """The precision the Trainer's ``amp`` option asks for on ``device``: ``False``,
        ``True`` (bf16 on the CPU, fp16 with gradient scaling elsewhere), ``"bf16"`` or
        ``"fp16"``."""
        if amp in (False, None, "none", "off"):
            return cls(device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(amp))
        if amp is True or amp == "auto":
            dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        if dtype is None:
            raise ConfigError(f"amp must be false, true, 'bf16' or 'fp16', got {amp!r}")
        if dtype == torch.float16 and device.type == "cpu":
            raise ConfigError("amp 'fp16' is not supported on the CPU; use 'bf16'")
        scaled = dtype == torch.float16 and device.type == "cuda"
        return cls(device, dtype, torch.amp.GradScaler(device.type) if scaled else None)

    def autocast(self) -> AbstractContextManager[Any]:
        """The context of a forward pass (a no-op in full precision)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss_scale(self) -> float:
        """The factor the backward pass multiplies the gradients by (1.0 without a scaler)."""
        if self.scaler is None:
            return 1.0
        # scale() also initialises the scaler's state that unscale_ and step need
        return float(self.scaler.scale(torch.ones((), device=self.device)))

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[Tensor],
        grad_clip: float | None = None,
    ) -> None:
        """Unscale the gradients, clip their global norm to ``grad_clip`` (None: no clipping),
        and step the optimiser (skipped by the scaler when a gradient overflowed)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state for a checkpoint (None without a scaler)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the scaler's state (nothing to do when either side has none)."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        dtype = "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        scaler = ", scaler" if self.scaler is not None else ""
        return f"Precision({dtype}{scaler})"
