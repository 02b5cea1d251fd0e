"""PCGrad: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman, Finn (2020). "Gradient Surgery for Multi-Task Learning".
NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlkit.weighting._manipulation import check_seed
from mtlkit.weighting.base import WEIGHTINGS, StateField
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("pcgrad")
class PCGrad(GramianWeighting):
    """Project each task gradient off the normal plane of the gradients it conflicts with.

    Algorithm 1 of the paper, for each task i::

        g_i^PC ← g_i
        for j ≠ i, in random order:
            if g_i^PC · g_j < 0:
                g_i^PC ← g_i^PC − (g_i^PC · g_j) / ‖g_j‖² · g_j
        update = Σ_i g_i^PC

    The inner products are taken with the *original* g_j, as in the paper. Every g_i^PC is a
    combination of the rows of J, so the method runs on the Gram matrix G = J Jᵀ: with
    g_i^PC = c_i J, g_i^PC · g_j = (c_i G)_j, and the update is (Σ_i c_i) J. This is the
    paper's algorithm, exactly, at O(T³) instead of O(T² P) cost, and it gives the task weights
    Σ_i c_i for the log. The T loops over j are independent of each other (each reads the
    original g_j), so their k-th steps run together: T − 1 vector steps, no Python loop over
    pairs.

    Scale: a sum over tasks, like EW (T identical gradients g give T·g); without conflicts
    the update is Σ_i g_i. A zero gradient g_j is skipped as a projection target.

    Randomness: the order of the j's is drawn from a ``torch.Generator`` seeded with ``seed``
    and owned by the method; its state is in :meth:`state_dict`, so resumed runs and DDP ranks
    draw the same orders.
    """

    name = "pcgrad"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_generator": StateField("generator", init="seed"),
    }

    def __init__(self, seed: int = 0, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.seed = check_seed("PCGrad", seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram.detach().to("cpu", torch.float64).numpy()
        t = g.shape[0]
        sq_norms = np.diag(g)
        # order[i]: the j ≠ i in task i's random order (one draw per task, as in the loop
        # of the algorithm box, so the draws and their use do not depend on the speed-up)
        order = np.empty((t, max(t - 1, 0)), dtype=np.int64)
        for i in range(t):
            perm = torch.randperm(t - 1, generator=self._generator).numpy()
            order[i] = perm + (perm >= i)  # position k of [0..t) without i
        coef = np.eye(t)  # row i: g_i^PC = coef[i] @ J
        rows = np.arange(t)
        for k in range(t - 1):  # step k of every task's loop at once: the rows are independent
            j = order[:, k]
            dot = np.einsum("it,ti->i", coef, g[:, j])  # g_i^PC · g_j
            hit = (dot < 0) & (sq_norms[j] > 0)
            coef[rows[hit], j[hit]] -= dot[hit] / sq_norms[j[hit]]
        return torch.from_numpy(coef.sum(axis=0)).to(gram.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed, **super().hyperparameters()}
