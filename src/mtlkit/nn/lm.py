"""The language-modelling head: per-token word logits from the shared token features.

BERT's masked-LM head (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", NAACL): a dense layer with GELU and LayerNorm, then
a linear map to the vocabulary. Deviation: the output layer is not tied to the encoder's word
embeddings, because a tied weight would be both shared and owned by the LM task, and the
model contract needs each parameter to be one or the other.

The task kinds are in :mod:`mtlkit.tasks.lm`, the masking and the targets in
:mod:`mtlkit.data.lm`.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.heads import HEADS
from mtlkit.tasks.lm import Objective


@HEADS.register("lm_head")
class LMHead(nn.Module):
    """``(B, L, D)`` features → ``(B, L, V)`` logits: Linear-GELU-LayerNorm-Linear.

    ``hidden`` is the width of the transform (the input width when None); ``transform=False``
    leaves a single linear layer.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int | None = None, transform: bool = True
    ) -> None:
        super().__init__()
        width = in_features if hidden is None else hidden
        if width < 1:
            raise ConfigError(f"head 'lm_head': option 'hidden' must be ≥ 1, got {hidden}")
        if transform:
            self.transform: nn.Module = nn.Sequential(
                nn.Linear(in_features, width), nn.GELU(), nn.LayerNorm(width)
            )
        else:
            self.transform, width = nn.Identity(), in_features
        self.decoder = nn.Linear(width, out_features)

    def forward(self, rep: Tensor) -> Tensor:
        return self.decoder(self.transform(rep))


def check_lm_encoder(encoder: nn.Module, objective: Objective) -> None:
    """Raise when next-token prediction would read the answer: a causal LM needs an encoder
    whose position t sees only positions ≤ t (``token`` with ``causal=True``)."""
    if objective == "causal" and not bool(getattr(encoder, "causal", False)):
        raise ConfigError(
            f"causal LM: encoder {type(encoder).__name__} is not causal, so position t sees the "
            "word it must predict; use the 'token' encoder with kind 'transformer', causal=True"
        )


__all__ = ["LMHead", "check_lm_encoder"]
