"""GradDrop: gradient sign dropout.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov (2020). "Just Pick a Sign: Optimizing
Deep Multitask Models with Gradient Sign Dropout". NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting._engine import HeadFactors
from mtlkit.weighting._manipulation import check_real, check_seed
from mtlkit.weighting.base import WEIGHTINGS, StateField, StepContext, StepRecord
from mtlkit.weighting.gradient import JacobianAggregator


@WEIGHTINGS.register("graddrop")
class GradDrop(JacobianAggregator):
    """Keep, at every coordinate, only the gradients of one sign, chosen by sign purity.

    Algorithm 1 of the paper, with f the identity::

        G_i = sgn(A) ∘ ∇_A L_i, summed over the batch dimension
        P   = ½ (1 + Σ_i G_i / Σ_i |G_i|)                  (positive sign purity)
        U   ~ Uniform(0, 1), one draw per coordinate of P
        M_i = 1[P > U] ∘ 1[G_i > 0] + 1[P < U] ∘ 1[G_i < 0]
        update = Σ_i (ℓ_i + (1 − ℓ_i) M_i) ∘ ∇_A L_i

    The paper applies GradDrop to the gradient at an activation layer A, so
    ``jacobian="representation"`` is the faithful mode: the model's shared representation is
    A, and the masks are computed with sgn(A) and summed over its first (batch) dimension, then
    shared by every sample. With the default ``jacobian="shared"`` (an extension, not in the
    paper) the masks are drawn per shared parameter, from G_i = ∇_θ L_i itself.

    ``leak`` is ℓ: one value in [0, 1] for every task, or a mapping task → value (tasks not
    named get 0). ℓ_i = 1 passes task i's gradient through untouched, so ``leak=1`` gives the
    plain sum. A coordinate where every G_i is zero has P = ½ and contributes nothing.

    Scale: a sum over tasks, like EW (T identical gradients g give T·g: P is 1 or 0 wherever
    g ≠ 0, so every coordinate is kept, barring a draw of U exactly equal to 0, which has
    probability 2⁻⁵³).

    Randomness: U is drawn in float64 on the CPU from a ``torch.Generator`` seeded with
    ``seed`` and owned by the method; its state is in :meth:`state_dict`, so resumed runs and
    DDP ranks draw the same masks.
    """

    name = "graddrop"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_generator": StateField("generator", init="seed"),
    }

    def __init__(
        self,
        leak: float | Mapping[str, float] = 0.0,
        seed: int = 0,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        if isinstance(leak, Mapping):
            self.leak: float | dict[str, float] = {
                str(task): check_real("GradDrop", f"leak['{task}']", v, low=0.0, high=1.0)
                for task, v in leak.items()
            }
        else:
            self.leak = check_real("GradDrop", "leak", leak, low=0.0, high=1.0)
        self.seed = check_seed("GradDrop", seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._activation: Tensor | None = None

    def on_bind(self) -> None:
        assert self.tasks is not None
        if isinstance(self.leak, dict):
            unknown = sorted(set(self.leak) - set(self.tasks))
            if unknown:
                raise ConfigError(
                    f"GradDrop: option 'leak' names unknown task(s) {', '.join(unknown)}; "
                    f"the tasks are {', '.join(self.tasks)}"
                )

    def leak_vector(self, num_tasks: int) -> Tensor:
        """ℓ in task order (float64, length T)."""
        if not isinstance(self.leak, dict):
            return torch.full((num_tasks,), self.leak, dtype=torch.float64)
        if self.tasks is None or len(self.tasks) != num_tasks:
            raise ConfigError(
                "GradDrop: a per-task option 'leak' needs the task order; call backward(), "
                "or bind(tasks) before aggregate()"
            )
        return torch.tensor([self.leak.get(t, 0.0) for t in self.tasks], dtype=torch.float64)

    def aggregate(self, jacobian: Tensor, /, *, activation: Tensor | None = None) -> Tensor:
        """The update from the T × P Jacobian.

        ``activation`` is the layer A the Jacobian was taken at (P = A.numel(), batch first);
        when given (``backward`` passes the representation in ``"representation"`` mode),
        sign purity uses sgn(A) and the batch sum, as in the paper.
        """
        t = jacobian.shape[0]
        act = activation if activation is not None else self._activation
        if act is not None:
            if act.numel() != jacobian.shape[1] or act.dim() < 2:
                raise TaskDataError(
                    f"GradDrop: activation of shape {tuple(act.shape)} does not fit a Jacobian "
                    f"of {jacobian.shape[1]} columns (it needs a batch dimension)"
                )
            grads = jacobian.reshape(t, *act.shape)
            signed = (grads * act.sign().to(grads.dtype)).sum(dim=1)  # T × features
        else:
            grads = jacobian
            signed = jacobian
        coefficients = self._coefficients(signed)
        if act is not None:
            coefficients = coefficients.unsqueeze(1)  # the same mask for every sample
        update = (grads * coefficients.to(grads.dtype)).sum(dim=0)
        return update.reshape(-1)

    def _coefficients(self, signed: Tensor) -> Tensor:
        """ℓ_i + (1 − ℓ_i) M_i (T × features) from the signed gradients G_i: the sign purity,
        one draw of U per feature, and the masks M_i (the algorithm in the class docstring)."""
        t = signed.shape[0]
        total = signed.sum(dim=0)
        mass = signed.abs().sum(dim=0)
        ratio = torch.where(mass > 0, total / mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)
        purity = 0.5 * (1.0 + ratio.double())
        u = torch.rand(purity.shape, generator=self._generator, dtype=torch.float64)
        u = u.to(purity.device)
        keep = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))  # T × features
        leak = self.leak_vector(t).to(device=signed.device, dtype=signed.dtype)
        leak = leak.view(t, *([1] * (signed.dim() - 1)))
        return leak + (1.0 - leak) * keep.to(signed.dtype)

    def factored_update(self, factors: HeadFactors, representation: Tensor) -> Tensor | None:
        """With heads that read r (N × d) through linear maps, every quantity of the algorithm
        is linear in the rows once the masks are known: the signed gradients
        Σ_n sgn(A_n) ⊙ row_i,n and the update Σ_i row_i ⊙ (ℓ_i + (1 − ℓ_i) M_i) come from the
        factors with N·O·d products (O the heads' output width), not T·N·d for the rows. The
        same draws and the same update as the explicit rows."""
        signed = factors.feature_sums(representation.detach().sign())  # T × d
        return factors.combine_features(self._coefficients(signed))  # N × d

    def step(self, ctx: StepContext, /) -> StepRecord:
        """As for every gradient method; in ``"representation"`` mode the representation's
        values also feed sgn(A) in the sign purity."""
        if self.jacobian == "representation" and ctx.representation is not None:
            self._activation = ctx.representation.detach()
        try:
            return super().step(ctx)
        finally:
            self._activation = None

    def hyperparameters(self) -> dict[str, Any]:
        return {"leak": self.leak, "seed": self.seed, **super().hyperparameters()}
