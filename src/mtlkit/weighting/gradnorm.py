"""GradNorm: gradient normalisation for adaptive loss balancing.

Chen, Badrinarayanan, Lee, Rabinovich (2018). "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks". ICML 2018.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting._manipulation import check_real
from mtlkit.weighting.base import WEIGHTINGS, StateField
from mtlkit.weighting.gradient import GramianWeighting

#: weights are kept at least this large before renormalisation (see the class docstring)
WEIGHT_FLOOR = 1e-6


@WEIGHTINGS.register("gradnorm")
class GradNorm(GramianWeighting):
    """Learn task weights w so that every task's weighted gradient norm trains at its pace.

    The paper's step t, with n_i = ‖∇_W L_i‖ (so G_W^(i) = w_i n_i = ‖∇_W w_i L_i‖)::

        update   = Σ_i w_i(t) ∇L_i                              (the network's step)
        Ḡ_W      = mean_i w_i n_i
        L̃_i      = L_i(t) / L_i(0),   r_i = L̃_i / mean_j L̃_j    (inverse training rate)
        L_grad   = Σ_i | w_i n_i − Ḡ_W · r_i^α |                (targets held constant)
        ∂L_grad/∂w_i = sign(w_i n_i − Ḡ_W r_i^α) · n_i
        w(t+1)   = renormalise(w(t) − lr · ∂L_grad/∂w),   Σ_i w_i(t+1) = T

    The gradient of L_grad is taken in closed form, so w is updated here with its own step
    size ``lr`` instead of by the network's optimiser (the paper uses the training optimiser
    and gives no separate rate; 0.025 is this library's default). α = 1.5 is the paper's
    asymmetry for its NYUv2 experiments (α = 0 pulls every norm to the mean).

    W: the paper takes the norms on the last shared layer's weights. Here n_i = √G_ii comes
    from whatever Jacobian the engine gives: all shared parameters (``jacobian="shared"``,
    the default) or the shared representation (``jacobian="representation"``, the cheapest
    and the closest in spirit to a last shared layer).

    Needs the losses: :meth:`backward` records them through :meth:`stack_losses`; to use
    :meth:`aggregate` on its own, call :meth:`observe_losses` first. The first losses seen are
    L_i(0) and must be positive.

    Deviation: w_i is floored at 1e-6 before renormalisation so no weight becomes negative
    (which would reverse a task's gradient); the paper does not say.

    Scale: Σ_i w_i = T, so T identical gradients g give T·g, a sum like EW.
    State: w (starting at 1) and L(0).
    """

    name = "gradnorm"
    stateful = True
    #: a task first seen in a partial step has weight 1 and no L_i(0) yet (NaN)
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_weights": StateField("tensor", key="weights", axes=(0,), fill=1.0, cpu64=True),
        "_initial_losses": StateField(
            "tensor", key="initial_losses", axes=(0,), fill=float("nan"), cpu64=True
        ),
        "_losses": StateField("tensor", axes=(0,), saved=False),  # this step's losses
    }
    _weights: Tensor | None
    _initial_losses: Tensor | None
    _losses: Tensor | None

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.alpha = check_real("GradNorm", "alpha", alpha, low=0.0)
        self.lr = check_real("GradNorm", "lr", lr, low=0.0, low_open=True)

    @property
    def task_weights(self) -> Tensor | None:
        """The weights w for the next step (sum T); None before the first step."""
        return None if self._weights is None else self._weights.clone()

    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = super().stack_losses(losses)
        self.observe_losses(stacked)
        return stacked

    def observe_losses(self, losses: Tensor) -> None:
        """Record this step's loss vector (task order); the first loss seen of each task
        becomes its L_i(0) (NaN entries of L(0) mark tasks not seen yet, after partial steps)."""
        current = losses.detach().to("cpu", torch.float64).reshape(-1)
        if self._initial_losses is None:
            self._initial_losses = torch.full_like(current, float("nan"))
        elif current.shape != self._initial_losses.shape:
            raise TaskDataError(
                f"GradNorm: got {current.numel()} losses, its state is for "
                f"{self._initial_losses.numel()} tasks"
            )
        unseen = self._initial_losses.isnan()
        bad = [
            i
            for i, v in enumerate(current.tolist())
            if unseen[i] and (not v > 0 or v == float("inf"))
        ]
        if bad:
            names = self.tasks or [str(i) for i in range(current.numel())]
            listed = ", ".join(f"'{names[i]}' = {current[i].item():g}" for i in bad)
            self._initial_losses = None if bool(unseen.all()) else self._initial_losses
            raise TaskDataError(
                f"GradNorm: initial loss(es) {listed} must be finite and > 0 "
                "(GradNorm measures training rates as L_i(t)/L_i(0))"
            )
        self._initial_losses = torch.where(unseen, current, self._initial_losses)
        self._losses = current

    def targets(self, norms: Tensor, weights: Tensor) -> Tensor:
        """The target norms Ḡ_W · r_i^α (float64) for gradient norms n and weights w."""
        assert self._losses is not None and self._initial_losses is not None
        rates = (self._losses / self._initial_losses).clamp_min(0.0)
        mean_rate = rates.mean()
        inverse = rates / mean_rate if mean_rate > 0 else torch.ones_like(rates)
        return (weights * norms).mean() * inverse**self.alpha

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        if self._losses is None:
            raise ConfigError(
                "GradNorm: needs the task losses; backward() records them, "
                "or call observe_losses() before aggregate()"
            )
        t = gram.shape[0]
        if self._losses.numel() != t:
            raise TaskDataError(
                f"GradNorm: got {t} task gradients but {self._losses.numel()} losses"
            )
        if self._weights is None:
            self._weights = torch.ones(t, dtype=torch.float64)
        weights = self._weights
        norms = gram.detach().to("cpu", torch.float64).diagonal().clamp_min(0.0).sqrt()
        grad = torch.sign(weights * norms - self.targets(norms, weights)) * norms
        stepped = (weights - self.lr * grad).clamp_min(WEIGHT_FLOOR)
        self._weights = t * stepped / stepped.sum()
        return weights.to(gram.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr": self.lr, **super().hyperparameters()}
