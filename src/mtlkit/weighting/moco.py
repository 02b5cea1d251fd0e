"""MoCo: multi-objective gradient correction with tracked gradients.

Fernando, Shen, Liu, Chaudhury, Murugesan, Chen (2023). "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach". ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.weighting._engine import HeadFactors
from mtlkit.weighting._manipulation import check_real, project_simplex
from mtlkit.weighting.base import WEIGHTINGS, StateField
from mtlkit.weighting.gradient import JacobianAggregator


@WEIGHTINGS.register("moco")
class MoCo(JacobianAggregator):
    """MGDA on tracked gradient estimates, with a single projected-gradient step on λ.

    Algorithm 1 of the paper, at step t = 1, 2, …, with H_t the T × P stochastic Jacobian::

        β_t = β / t^β_σ,   γ_t = γ / t^γ_σ
        Y_{t+1} = Y_t − β_t (Y_t − H_t)                      (tracking, per task)
        λ_{t+1} = Π_Δ(λ_t − γ_t (Y_{t+1} Y_{t+1}ᵀ + ρ I) λ_t)   (simplex projection)
        update  = T · Y_{t+1}ᵀ λ_{t+1}

    Tracking averages out the stochastic bias of the min-norm direction; ρ > 0 regularises λ.
    The defaults (β = 0.5, β_σ = 0.5, γ = 0.1, γ_σ = 0.5, ρ = 0) are those of the authors'
    code. State: Y, λ (starting uniform, 1/T) and t.

    Deviations: the paper leaves Y's start free; here Y starts at the first Jacobian
    (Y_1 = H_1), so the first update is not shrunk toward zero. The authors' code also
    rescales each task gradient to the norm of its loss and replaces Π_Δ by a softmax; this
    follows the paper's algorithm box instead.

    Scale: λ lives on the simplex (a convex combination), so the update is multiplied by T to
    follow the library's sum convention: T identical gradients g give T·g. The weights T·λ
    act on the tracked gradients Y, not on the Jacobian, so the engine logs least-squares
    effective weights; :attr:`task_weights` gives T·λ.
    """

    name = "moco"
    stateful = True
    #: Y and λ per task; a task first seen in a partial step has NaN entries until it is
    #: present: its tracked gradient then starts at its Jacobian row, and λ is renormalised
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_iteration": StateField("int"),
        "_y": StateField("tensor", axes=(0,), fill=float("nan")),
        "_lambda": StateField("tensor", axes=(0,), fill=float("nan"), cpu64=True),
    }
    _iteration: int
    _y: Tensor | None
    _lambda: Tensor | None

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.beta = check_real("MoCo", "beta", beta, low=0.0, high=1.0, low_open=True)
        self.beta_sigma = check_real("MoCo", "beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_real("MoCo", "gamma", gamma, low=0.0, low_open=True)
        self.gamma_sigma = check_real("MoCo", "gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_real("MoCo", "rho", rho, low=0.0)

    @property
    def task_weights(self) -> Tensor | None:
        """T·λ, the weights of the tracked gradients at the last step; None before it."""
        return None if self._lambda is None else len(self._lambda) * self._lambda

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        h = jacobian.detach()
        t = h.shape[0]
        if self._y is not None and self._y.shape != h.shape:
            raise TaskDataError(
                f"MoCo: its tracked gradients are {tuple(self._y.shape)}, "
                f"got a Jacobian of {tuple(h.shape)}"
            )
        self._iteration += 1
        if self._y is None:
            self._y = h.clone()
        else:
            beta_t = self.beta / self._iteration**self.beta_sigma
            y = self._y.to(h)
            if _has_new_rows(y):  # tasks first seen now: their rows start at H
                self._y = torch.where(y.isnan(), h, y - beta_t * (y - h))
            else:  # Y ← Y + β_t (H − Y), in place: one pass over T × P, no temporaries
                self._y = y.lerp_(h, beta_t)
        return self._lambda_step(t, h)

    def _lambda_step(self, t: int, like: Tensor) -> Tensor:
        """λ ← Π_Δ(λ − γ_t (Y Yᵀ + ρI) λ) on the tracked Y, and the update T·Yᵀλ (``like``'s
        dtype and device)."""
        assert self._y is not None
        if self._lambda is None:
            self._lambda = torch.full((t,), 1.0 / t, dtype=torch.float64)
        elif bool(self._lambda.isnan().any()):  # tasks first seen now, after partial steps
            lam = torch.where(self._lambda.isnan(), 1.0 / t, self._lambda)
            self._lambda = lam / lam.sum()
        gamma_t = self.gamma / self._iteration**self.gamma_sigma
        gram = _gram64(self._y).cpu() + self.rho * torch.eye(t, dtype=torch.float64)
        self._lambda = project_simplex(self._lambda - gamma_t * gram @ self._lambda)
        weights = t * self._lambda
        return weights.to(device=like.device, dtype=like.dtype) @ self._y

    def factored_update(self, factors: HeadFactors, representation: Tensor) -> Tensor | None:
        """The tracked gradients need rows, but not this step's: Y ← (1 − β_t)Y + β_t H is
        written into Y from the factors (one batched product added in place,
        :meth:`~mtlkit.weighting._engine.backward.HeadFactors.blend_into`), H never formed;
        the record's G and J·update come from the factors, not from T²·N·d and T·N·d products
        on the rows. The first step, and a step after tasks were missing, form H."""
        y, t = self._y, factors.tasks
        if (
            y is None
            or y.shape != (t, representation.numel())
            or not factors.blends_into(y)
            or _has_new_rows(y)
        ):
            return self.aggregate(factors.rows()).view_as(representation)
        self._iteration += 1
        factors.blend_into(y, self.beta / self._iteration**self.beta_sigma)
        return self._lambda_step(t, y).view_as(representation)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "gamma": self.gamma,
            "gamma_sigma": self.gamma_sigma,
            "rho": self.rho,
            **super().hyperparameters(),
        }


def _has_new_rows(y: Tensor) -> bool:
    """Whether Y holds the row of a task not tracked yet: the state gives such a task a row of
    NaN (``state_fields``' fill), so its first entry tells, and Y itself (T × P) is not read."""
    return bool(y[:, 0].isnan().any())


#: columns of Y per float64 block of :func:`_gram64` (T × 4096 doubles stay in cache)
GRAM_BLOCK = 4096


def _gram64(y: Tensor) -> Tensor:
    """Y Yᵀ in float64 for a T × P tensor Y of any floating dtype: Σ over column blocks of
    Y_b Y_bᵀ, each block converted to float64 on its own, so that no T × P float64 copy of Y is
    made (for a float32 Y of T = 40 rows of 131 072 values, 42 MB written and read each step)."""
    if y.dtype == torch.float64 or y.shape[1] <= GRAM_BLOCK:
        y64 = y.double()
        return y64 @ y64.T
    gram = torch.zeros(y.shape[0], y.shape[0], dtype=torch.float64, device=y.device)
    buffer = torch.empty(y.shape[0], GRAM_BLOCK, dtype=torch.float64, device=y.device)
    for start in range(0, y.shape[1], GRAM_BLOCK):
        width = min(GRAM_BLOCK, y.shape[1] - start)
        block = buffer[:, :width]
        block.copy_(y[:, start : start + width])  # into one reused buffer: no allocation
        gram.addmm_(block, block.T)
    return gram
