"""Gradient-based methods: they combine the per-task gradients of the shared parameters.

The per-task gradients form the Jacobian J (T × P): row i is ∇_θ L_i over the shared
parameters θ. A method turns J into one update vector of length P (:meth:`aggregate`);
task-specific parameters always receive their own task's gradient.

Two kinds of method:

- :class:`GramianWeighting` needs only the Gram matrix G = J Jᵀ: it computes task weights
  α = f(G) and the update is Jᵀα (MGDA, IMTL-G, CAGrad, Nash-MTL, UPGrad, ...);
- :class:`JacobianAggregator` needs J itself (PCGrad, GradDrop, GradVac, ConFIG, ...).

Where the Jacobian is taken is one knob for every method, ``jacobian``:

- ``"shared"`` (default): all shared parameters;
- ``"representation"``: the shared representation the heads read (MGDA-UB, Sener & Koltun
  2018); the update on the representation is back-propagated into the shared parameters;
  the cheapest mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepRecord, Weighting

JACOBIAN_MODES = ("shared", "representation")


def shared_params_of(model: nn.Module, method: object) -> list[nn.Parameter]:
    """The model's trainable shared parameters; an error when it declares none."""
    getter = getattr(model, "shared_parameters", None)
    if getter is None:
        raise ConfigError(
            f"{method}: the model {type(model).__name__} has no shared_parameters(); "
            "gradient-based methods need a model that declares its shared parameters"
        )
    params = [p for p in getter() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"{method}: the model {type(model).__name__} declares no shared parameters, "
            "so there is nothing to combine task gradients on"
        )
    return params


def task_jacobian(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """The T × P Jacobian of the loss vector with respect to ``inputs`` (flattened, concatenated).

    One vectorised backward pass (``is_grads_batched``); unused inputs give zero columns.
    """
    t = losses.shape[0]
    eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, list(inputs), grad_outputs=eye, retain_graph=True,
        is_grads_batched=True, allow_unused=True,
    )
    rows = [
        (g if g is not None else torch.zeros((t, *x.shape), dtype=x.dtype, device=x.device))
        .reshape(t, -1)
        for g, x in zip(grads, inputs, strict=True)
    ]
    return torch.cat(rows, dim=1)


def gram_statistics(gram: Tensor, tasks: Sequence[str]) -> tuple[dict[str, float], list[list[float]]]:
    """Task-gradient norms and pairwise cosines from the Gram matrix G = J Jᵀ."""
    g = gram.double()
    norms = g.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, g / denom.clamp_min(1e-300), torch.zeros_like(g))
    return dict(zip(tasks, norms.tolist(), strict=True)), cos.tolist()


class GradientWeighting(Weighting):
    """Base of gradient-based methods (see the module docstring)."""

    #: whether the method returns task weights for the record (False: effective weights are
    #: estimated by least squares of the update on the task gradients)
    gives_weights: ClassVar[bool] = True

    def __init__(self, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__()
        if jacobian not in JACOBIAN_MODES:
            raise ConfigError(
                f"{type(self).__name__}: option 'jacobian' must be one of "
                f"{', '.join(JACOBIAN_MODES)}, got '{jacobian}'"
            )
        if int(update_every) < 1:
            raise ConfigError(
                f"{type(self).__name__}: option 'update_every' must be ≥ 1, got {update_every}"
            )
        self.jacobian = jacobian
        self.update_every = int(update_every)

    @property
    def needs_representation(self) -> bool:
        return self.jacobian == "representation"

    def aggregate(self, jacobian: Tensor, /) -> Tensor:  # pragma: no cover - abstract
        """The update vector (length P) from the T × P Jacobian."""
        raise NotImplementedError

    def last_weights(self) -> Tensor | None:
        """The task weights of the last :meth:`aggregate` call, when the method has them."""
        return getattr(self, "_last_weights", None)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        model: nn.Module,
        *,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord:
        stacked = self.stack_losses(losses)
        assert self.tasks is not None
        shared = shared_params_of(model, self)
        if self.jacobian == "representation":
            if representation is None:
                raise ConfigError(
                    f"{self}: jacobian 'representation' needs the shared representation; "
                    "pass representation= (model.forward_with_representation gives it)"
                )
            wrt: list[Tensor] = [representation]
        else:
            wrt = list(shared)
        jac = task_jacobian(stacked, wrt)
        update = self.aggregate(jac)
        gram = jac @ jac.T
        weights = self.last_weights()
        if weights is None:
            weights = torch.linalg.lstsq(jac.T.double(), update.double().unsqueeze(1)).solution[:, 0]
        # task-specific parameters: each task's own gradient (Σ_i L_i restricted to them)
        shared_ids = {id(p) for p in shared}
        own = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        if self.jacobian == "representation":
            torch.autograd.backward(
                [stacked.sum() * loss_scale, representation],
                [None, (update * loss_scale).view_as(representation).to(representation.dtype)],
                inputs=own + shared,
            )
        else:
            if own:
                (stacked.sum() * loss_scale).backward(inputs=own)
            offset = 0
            for p in shared:
                n = p.numel()
                g = (update[offset : offset + n] * loss_scale).view_as(p).to(p.dtype)
                p.grad = g if p.grad is None else p.grad + g
                offset += n
        norms, cosines = gram_statistics(gram.detach(), self.tasks)
        return StepRecord(
            weights=dict(zip(self.tasks, weights.tolist(), strict=True)),
            norms=norms,
            cosines=cosines,
        )

    def hyperparameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.jacobian != "shared":
            params["jacobian"] = self.jacobian
        if self.update_every != 1:
            params["update_every"] = self.update_every
        return params


class GramianWeighting(GradientWeighting):
    """A gradient method whose weights depend on the Gram matrix alone: α = f(J Jᵀ)."""

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:  # pragma: no cover - abstract
        """Task weights α (length T) from the T × T Gram matrix."""
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        alpha = self.weights_from_gram(jacobian @ jacobian.T)
        self._last_weights = alpha.detach()
        return alpha.to(jacobian.dtype) @ jacobian


class JacobianAggregator(GradientWeighting):
    """A gradient method that needs the Jacobian itself, not only its Gram matrix."""

    gives_weights = False
