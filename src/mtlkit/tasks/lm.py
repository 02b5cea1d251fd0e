"""Language modelling as a task: masked-token and next-token prediction on a token encoder.

Importing this module registers:

- task kinds ``masked_lm`` and ``causal_lm``: output ``(B, L, V)`` word logits, target
  ``(B, L)`` word ids with ``-100`` where nothing is predicted; loss ``token_cross_entropy``;
  metrics ``perplexity`` (lower is better) and ``token_accuracy``;
- metric ``perplexity``: exp of the mean cross-entropy over the predicted positions.

**Masked LM** (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding", NAACL), for a bidirectional encoder: the target is the original
word at the masked positions and ``-100`` elsewhere. **Causal LM** (next-token prediction;
Radford et al., 2018, "Improving Language Understanding by Generative Pre-Training", OpenAI),
for a causal encoder: position t predicts the word at t + 1. The targets are made from the
batches by :class:`mtlkit.data.lm.LMLoader`, the head is :class:`mtlkit.nn.lm.LMHead`
(``lm_head``), and :func:`mtlkit.nn.lm.check_lm_encoder` checks that a causal LM's encoder
cannot see the word it must predict.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.tasks._task import TASK_KINDS, Task
from mtlkit.tasks.metrics import Sums, metric
from mtlkit.tasks.tagging import TokenKind, token_pairs

Objective = Literal["masked", "causal"]

MASKED_LM = TokenKind(
    "masked_lm", "token_cross_entropy", ("perplexity", "token_accuracy"), True, True
)
CAUSAL_LM = TokenKind(
    "causal_lm", "token_cross_entropy", ("perplexity", "token_accuracy"), True, True
)
for _kind in (MASKED_LM, CAUSAL_LM):
    TASK_KINDS.register(_kind.name, _kind)


class PerplexitySums(Sums):
    """``perplexity`` batch by batch: the summed cross-entropy and the predicted positions."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        logits, tgt = token_pairs(output, target, "perplexity")
        if tgt.numel() == 0:
            return {"nll": torch.zeros((), dtype=torch.float64), "count": torch.tensor(0)}
        nll = F.cross_entropy(logits.double(), tgt, reduction="sum")
        return {"nll": nll, "count": torch.tensor(tgt.numel())}

    def value(self, sums: dict[str, Tensor]) -> float:
        if "count" not in sums or int(sums["count"]) == 0:
            return math.nan
        return math.exp(float(sums["nll"]) / int(sums["count"]))


@metric("perplexity", "min", PerplexitySums)
def perplexity(output: Tensor, target: Tensor) -> float:
    """exp(mean cross-entropy) over positions whose target is not -100 (NaN if none)."""
    logits, tgt = token_pairs(output, target, "perplexity")
    if tgt.numel() == 0:
        return math.nan
    return float(torch.exp(F.cross_entropy(logits.double(), tgt)))


def lm_task(
    name: str = "lm", objective: Objective = "masked", vocab_size: int = 2, weight: float = 1.0
) -> Task:
    """An auxiliary language-modelling task over ``vocab_size`` words, on the ``lm_head``."""
    if objective not in ("masked", "causal"):
        raise ConfigError(
            f"task '{name}': option 'objective' must be 'masked' or 'causal', got {objective!r}"
        )
    kind = "masked_lm" if objective == "masked" else "causal_lm"
    return Task(name, kind, vocab_size, weight=weight, auxiliary=True, head="lm_head")


__all__ = ["CAUSAL_LM", "MASKED_LM", "Objective", "lm_task", "perplexity"]
