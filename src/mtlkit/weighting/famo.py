"""FAMO: fast adaptive multitask optimisation, balancing the rates of loss decrease.

Liu, Feng, Stone & Liu (2023), "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.weighting._loss_common import check_positive_losses, check_real
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@WEIGHTINGS.register("famo")
class FAMO(LossWeighting):
    """FAMO (Algorithm 1 of the paper), one backward pass per step.

    Task logits ξ (T entries, 0 at the start) give z = softmax(ξ). At step t::

        c   = (Σ_i z_i / L_i)^(-1)
        d   = c Σ_i (z_i / L_i) ∇L_i           the model's update, from Σ_i z_i log L_i / c
        δ   = (∂z/∂ξ)ᵀ [log L_i(t−1) − log L_i(t)]_i
        ξ  ← ξ − lr · (δ + γ ξ)                  (through Adam, as in the authors' code)

    so tasks whose loss has recently fallen the least get a larger weight, and every task's
    loss decreases at about the same rate. Scale: task i has weight c z_i / L_i; the weights
    sum to 1 (the paper's scale: with equal losses each is 1/T, the mean of EW's update).

    Deviations: the paper computes the loss after the model step on the *same* batch to update
    ξ; with no extra forward pass in the interface, ξ is updated at the next call, from the
    previous step's losses and the current ones (a new batch); in a partial step (absent
    tasks) ξ moves over the present tasks only, and a task's progress is measured since it
    was last present (none the first time). The loss lower bounds L_i* of the
    paper are taken as 0, as in its experiments. The ξ step uses Adam with L2 decay γ (the
    authors' implementation), kept inside the method so its state is a few tensors.
    Under DDP, pass globally averaged losses so that ξ stays equal on every rank. The authors'
    training scripts also clip the gradient norm to 1; FAMO here does not clip (set the
    Trainer's ``train.grad_clip: 1.0`` to match them).

    Args:
        lr: the step size of ξ (the paper's β, 0.025).
        gamma: the weight decay γ of ξ (0.001).
    """

    name = "famo"
    stateful = True
    #: a task first seen in a partial step has no previous loss (NaN): no progress yet
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "logits": StateField("tensor", axes=(0,), cpu64=True),  # ξ
        "adam_m": StateField("tensor", axes=(0,), cpu64=True),
        "adam_v": StateField("tensor", axes=(0,), cpu64=True),
        "adam_step": StateField("int"),
        "prev_losses": StateField("tensor", axes=(0,), fill=float("nan"), cpu64=True),
    }
    logits: Tensor | None
    adam_m: Tensor | None
    adam_v: Tensor | None
    adam_step: int
    prev_losses: Tensor | None

    def __init__(self, lr: float = 0.025, gamma: float = 0.001) -> None:
        super().__init__()
        self.lr = check_real("FAMO", "lr", lr, low=0.0, strict=True)
        self.gamma = check_real("FAMO", "gamma", gamma, low=0.0)

    def on_bind(self) -> None:
        assert self.tasks is not None
        n = len(self.tasks)
        self.logits = torch.zeros(n, dtype=torch.float64)
        self.adam_m = torch.zeros(n, dtype=torch.float64)
        self.adam_v = torch.zeros(n, dtype=torch.float64)
        self.adam_step = 0
        self.prev_losses = None

    def update_logits(self, prev_losses: Tensor, losses: Tensor) -> None:
        """One step of ξ from two consecutive loss vectors (the paper's δ, plus decay γ)."""
        assert self.logits is not None and self.adam_m is not None and self.adam_v is not None
        z = torch.softmax(self.logits, dim=0)
        progress = prev_losses.log() - losses.log()
        progress = torch.where(progress.isnan(), torch.zeros_like(progress), progress)
        delta = z * (progress - (z * progress).sum())  # (∂z/∂ξ)ᵀ progress
        grad = delta + self.gamma * self.logits
        self.adam_step += 1
        b1, b2 = _ADAM_BETAS
        self.adam_m = b1 * self.adam_m + (1 - b1) * grad
        self.adam_v = b2 * self.adam_v + (1 - b2) * grad.square()
        m_hat = self.adam_m / (1 - b1**self.adam_step)
        v_hat = self.adam_v / (1 - b2**self.adam_step)
        self.logits = self.logits - self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.tasks is not None and self.logits is not None
        check_positive_losses(str(self), self.tasks, losses)
        current = losses.detach().to(device="cpu", dtype=torch.float64)
        if self.prev_losses is not None:
            self.update_logits(self.prev_losses, current)
        self.prev_losses = current
        z = torch.softmax(self.logits, dim=0).to(dtype=losses.dtype, device=losses.device)
        c = 1.0 / (z / losses.detach()).sum()
        objective = (z * losses.log()).sum() * c
        return objective, c * z / losses.detach()

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "gamma": self.gamma}
