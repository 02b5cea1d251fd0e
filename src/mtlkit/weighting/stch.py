"""Smooth Tchebycheff scalarisation (STCH) for multi-task learning.

Lin, Zhang, Yang, Liu, Wang & Zhang (2024), "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.weighting._loss_common import check_int, check_positive_losses, check_real
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField


@WEIGHTINGS.register("stch")
class STCH(LossWeighting):
    """Smooth Tchebycheff scalarisation: g_μ = μ log Σ_i exp(λ_i (f_i − z_i) / μ).

    As in the paper's multi-task experiments, the objectives are the normalised log-losses
    f_i = log(L_i / L_i^nadir) with the ideal point z = 0 and equal preferences λ_i = 1. The
    nadir L_i^nadir is each task's mean training loss over the last warm-up epoch, during which
    (as in all warm-up epochs) the method minimises the scale-invariant loss Σ_i log L_i. After
    warm-up the objective is T · μ · logsumexp_i(f_i / μ), a smooth maximum of the f_i: as
    μ → 0 it puts all weight on the worst-off task (Tchebycheff), as μ grows it tends to the
    scale-invariant sum. The epochs are counted through :meth:`on_epoch_end`, which the training
    loop must call with each epoch's mean task losses (the Trainer does).

    Scale: task i has weight T p_i / L_i with p = softmax(f/μ), so with equal normalised losses
    the weights are 1/L_i, as during the warm-up (the authors' scaling by T).

    Args:
        mu: the smoothing parameter μ (1.0 in the authors' MTL code).
        warmup_epochs: epochs trained with Σ log L_i before STCH starts; the last of them gives
            the nadir point (5: epochs 0–4 in the authors' code, the nadir from epoch 4).
    """

    name = "stch"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "epochs_seen": StateField("int"),
        "nadir": StateField("list", axes=(0,)),
    }
    epochs_seen: int
    nadir: list[float] | None

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 5) -> None:
        super().__init__()
        self.mu = check_real("STCH", "mu", mu, low=0.0, strict=True)
        self.warmup_epochs = check_int("STCH", "warmup_epochs", warmup_epochs, low=1)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.bind(list(mean_losses))
        assert self.tasks is not None
        self.epochs_seen += 1
        if self.epochs_seen == self.warmup_epochs:
            nadir = [float(mean_losses[t]) for t in self.tasks]
            for task, value in zip(self.tasks, nadir, strict=True):
                if not (math.isfinite(value) and value > 0):
                    raise TaskDataError(
                        f"STCH: task '{task}': mean loss of the last warm-up epoch must be "
                        f"finite and > 0 to serve as the nadir point, got {value}"
                    )
            self.nadir = nadir

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.tasks is not None
        check_positive_losses(str(self), self.tasks, losses)
        if self.nadir is None:
            return losses.log().sum(), 1.0 / losses.detach()
        nadir = torch.tensor(self.nadir, dtype=losses.dtype, device=losses.device)
        f = torch.log(losses / nadir)
        t = len(self.tasks)
        objective = t * self.mu * torch.logsumexp(f / self.mu, dim=0)
        p = torch.softmax(f.detach() / self.mu, dim=0)
        return objective, t * p / losses.detach()

    def hyperparameters(self) -> dict[str, Any]:
        return {"mu": self.mu, "warmup_epochs": self.warmup_epochs}
