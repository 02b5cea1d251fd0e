"""Random loss weighting (RLW): fresh random task weights at every step.

Lin, Ye, Zhang & Tsang (2022), "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", Transactions on Machine Learning Research (TMLR) 2022.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.weighting._loss_common import check_int
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField


@WEIGHTINGS.register("rlw")
class RLW(LossWeighting):
    """Random loss weighting: at each step draw λ̃ ~ N(0, I_T) and use λ = T · softmax(λ̃).

    The paper's weights are softmax(λ̃), on the simplex; here they are multiplied by the number
    of tasks T so that they sum to T like EW's (the paper's scale is this one divided by T).
    The draws come from a ``torch.Generator`` owned by the method and seeded with ``seed``, so
    the weights do not depend on (or disturb) the global random state; its state is saved by
    :meth:`state_dict`, so a resumed run draws exactly what the uninterrupted one would, and
    ranks of a distributed run, built with the same seed, draw the same weights.

    Args:
        seed: the seed of the method's generator.
    """

    name = "rlw"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "generator": StateField("generator", init="seed"),
    }

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = check_int("RLW", "seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)

    def weights(self, losses: Tensor) -> Tensor:
        draw = torch.randn(len(losses), generator=self.generator, dtype=torch.float64)
        w = len(losses) * torch.softmax(draw, dim=0)
        return w.to(dtype=losses.dtype, device=losses.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}
