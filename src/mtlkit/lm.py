"""Language modelling as a task: masked-token and next-token prediction on a token encoder.

Importing this module registers:

- task kinds ``masked_lm`` and ``causal_lm``: output ``(B, L, V)`` word logits, target
  ``(B, L)`` word ids with ``-100`` where nothing is predicted; loss ``token_cross_entropy``;
  metrics ``perplexity`` (lower is better) and ``token_accuracy``;
- metric ``perplexity``: exp of the mean cross-entropy over the predicted positions;
- metric ``token_macro_f1``: per-token F1 averaged over classes, for tagging tasks;
- head ``lm_head`` (:class:`mtlkit.nn.lm.LMHead`).

**Masked LM** (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding", NAACL), for a bidirectional encoder: :func:`mask_tokens`
selects each real token with probability ``mask_prob`` (15%); of the selected, 80% become
``<mask>``, 10% a random word, 10% stay; the target is the original word at selected
positions and ``-100`` elsewhere. Masks are drawn anew for every batch (dynamic masking,
Liu et al., 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach", arXiv) from the
global torch generator, so a seeded run is reproducible and a resumed run continues exactly
(the Trainer saves that generator). Deviations: BERT masks exactly 15% of a sequence's
tokens; here each token is selected independently (as the Hugging Face collator does), and
special ids (padding, ``<unk>``, ``<mask>``) are never selected nor drawn as random words.

**Causal LM** (next-token prediction; Radford et al., 2018, "Improving Language
Understanding by Generative Pre-Training", OpenAI), for a causal encoder (``token`` with
``kind="transformer", causal=True``): :func:`next_token_targets` gives position t the word at
t + 1; the last word of a sentence predicts nothing.

**Beside tagging tasks, on joint batches.** The Trainer feeds one input to the model and
every head reads the same representation. :class:`LMLoader` therefore masks the *input* of
the whole batch during training: the tagging heads see the masked sentence too, which acts
as word dropout for them (15% × 80% of words hidden), a standard regulariser for taggers.
Validation and test batches are left clean (``mode="clean"``): the tagging tasks are
evaluated on the real sentence, and the masked-LM targets are all ``-100`` (its loss is an
exact 0 and its metrics NaN; it is an auxiliary task, so model selection ignores it). To
measure the masked LM itself, evaluate with ``mode="fixed"`` (a private generator seeded by
``seed``, the same masks every pass, the global generator untouched). Next-token targets
need no masking, so a causal LM is evaluated on clean batches in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit.tagging_metrics  # noqa: F401  (registers token_accuracy)
from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.kinds import TokenKind
from mtlkit.losses import IGNORE_INDEX
from mtlkit.metrics import metric
from mtlkit.nn.lm import LMHead
from mtlkit.nn.sequence import PAD_INDEX
from mtlkit.tasks import TASK_KINDS, Task

Objective = Literal["masked", "causal"]
Mode = Literal["dynamic", "fixed", "clean"]

MASKED_LM = TokenKind(
    "masked_lm", "token_cross_entropy", ("perplexity", "token_accuracy"), True, True
)
CAUSAL_LM = TokenKind(
    "causal_lm", "token_cross_entropy", ("perplexity", "token_accuracy"), True, True
)
for _kind in (MASKED_LM, CAUSAL_LM):
    TASK_KINDS.register(_kind.name, _kind)


# --------------------------------------------------------------------------- metrics


def _token_pairs(output: Tensor, target: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if output.dim() != target.dim() + 1 or tuple(output.shape[:-1]) != tuple(target.shape):
        raise TaskDataError(
            f"metric '{what}': output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected output (*target.shape, num_classes))"
        )
    keep = target != IGNORE_INDEX
    return output[keep], target[keep].long()


@metric("perplexity", "min")
def perplexity(output: Tensor, target: Tensor) -> float:
    """exp(mean cross-entropy) over positions whose target is not -100 (NaN if none)."""
    logits, tgt = _token_pairs(output, target, "perplexity")
    if tgt.numel() == 0:
        return math.nan
    return float(torch.exp(F.cross_entropy(logits.double(), tgt)))


@metric("token_macro_f1", "max")
def token_macro_f1(output: Tensor, target: Tensor) -> float:
    """Per-token F1 averaged over the classes that occur in the target or the prediction
    (the argmax over the last dim of ``(B, L, C)`` logits; targets -100 left out)."""
    logits, tgt = _token_pairs(output, target, "token_macro_f1")
    if tgt.numel() == 0:
        return math.nan
    pred = logits.argmax(dim=-1)
    classes = torch.unique(torch.cat([pred, tgt]))
    p, t = pred.unsqueeze(1) == classes, tgt.unsqueeze(1) == classes
    tp = (p & t).sum(0).double()
    denom = p.sum(0).double() + t.sum(0).double()
    return float(np.mean((2 * tp / denom).numpy()))


# --------------------------------------------------------------------------- targets


def mask_tokens(
    tokens: Tensor,
    *,
    vocab_size: int,
    mask_id: int = 2,
    special_ids: Sequence[int] = (0, 1, 2),
    mask_prob: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of ``(B, L)`` word ids: returns ``(masked inputs, targets)``.

    Each token whose id is not special is selected with probability ``mask_prob``; a selected
    token becomes ``mask_id`` with probability ``mask_fraction``, a uniformly drawn
    non-special id with probability ``random_fraction``, and stays otherwise. Targets hold
    the original id at selected positions and -100 elsewhere.
    """
    _check_masking(vocab_size, mask_id, special_ids, mask_prob, mask_fraction, random_fraction)
    specials = torch.tensor(sorted({*special_ids, mask_id}), dtype=tokens.dtype)
    eligible = ~torch.isin(tokens, specials)
    draw = torch.rand(tokens.shape, generator=generator)
    selected = eligible & (draw < mask_prob)
    how = torch.rand(tokens.shape, generator=generator)
    allowed = torch.tensor(
        [i for i in range(vocab_size) if i not in set(specials.tolist())], dtype=tokens.dtype
    )
    random_words = allowed[torch.randint(len(allowed), tokens.shape, generator=generator)]
    inputs = torch.where(selected & (how < mask_fraction), torch.full_like(tokens, mask_id), tokens)
    swap = selected & (how >= mask_fraction) & (how < mask_fraction + random_fraction)
    inputs = torch.where(swap, random_words, inputs)
    targets = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, targets


def _check_masking(
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    mask_prob: float,
    mask_fraction: float,
    random_fraction: float,
) -> None:
    where = "masked LM"
    if not 0.0 < mask_prob <= 1.0:
        raise ConfigError(f"{where}: option 'mask_prob' must be in (0, 1], got {mask_prob}")
    for option, value in (("mask_fraction", mask_fraction), ("random_fraction", random_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}: option '{option}' must be in [0, 1], got {value}")
    if mask_fraction + random_fraction > 1.0 + 1e-9:
        raise ConfigError(
            f"{where}: options 'mask_fraction' + 'random_fraction' must be ≤ 1, got "
            f"{mask_fraction} + {random_fraction}"
        )
    if not 0 <= mask_id < vocab_size:
        raise ConfigError(f"{where}: option 'mask_id' must be in [0, {vocab_size}), got {mask_id}")
    if len({*special_ids, mask_id} & set(range(vocab_size))) >= vocab_size:
        raise ConfigError(
            f"{where}: option 'vocab_size' {vocab_size} leaves no word besides the special ids"
        )


def next_token_targets(tokens: Tensor, pad_id: int = PAD_INDEX) -> Tensor:
    """Targets of next-token prediction for right-padded ``(B, L)`` ids: position t gets the
    id at t + 1 when both are real tokens, -100 otherwise (so the last word predicts nothing)."""
    real = tokens != pad_id
    following = torch.full_like(tokens, IGNORE_INDEX)
    following[:, :-1] = tokens[:, 1:]
    keep = real.clone()
    keep[:, :-1] &= real[:, 1:]
    keep[:, -1] = False
    return torch.where(keep, following, torch.full_like(tokens, IGNORE_INDEX))


# --------------------------------------------------------------------------- loader


class LMLoader:
    """Wraps a loader of ``(inputs, targets)`` batches: adds the language-modelling task's
    targets to each batch (and masks the inputs for a masked LM).

    Args:
        loader: any iterable of batches whose inputs are ``(B, L)`` word ids or a mapping
            with ``tokens``.
        task: the language-modelling task's name (its key in the targets).
        objective: ``"masked"`` (:func:`mask_tokens`) or ``"causal"``
            (:func:`next_token_targets`).
        mode: masked LM only. ``"dynamic"``: fresh masks from the global torch generator
            (training); ``"fixed"``: masks from a private generator seeded by ``seed`` at
            each pass (measuring the masked LM); ``"clean"``: inputs untouched, targets -100
            (evaluating the other tasks).
        vocab_size, mask_id, special_ids, mask_prob, mask_fraction, random_fraction: see
            :func:`mask_tokens`; the defaults fit :mod:`mtlkit.data.conll` vocabularies.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        task: str = "lm",
        objective: Objective = "masked",
        *,
        vocab_size: int,
        mode: Mode = "dynamic",
        seed: int = 0,
        mask_id: int = 2,
        special_ids: Sequence[int] = (0, 1, 2),
        mask_prob: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
    ) -> None:
        if objective not in ("masked", "causal"):
            raise ConfigError(
                f"LM loader: option 'objective' must be 'masked' or 'causal', got {objective!r}"
            )
        if mode not in ("dynamic", "fixed", "clean"):
            raise ConfigError(
                f"LM loader: option 'mode' must be 'dynamic', 'fixed' or 'clean', got {mode!r}"
            )
        if objective == "masked":
            _check_masking(
                vocab_size, mask_id, special_ids, mask_prob, mask_fraction, random_fraction
            )
        self.loader = loader
        self.task = task
        self.objective = objective
        self.mode = mode
        self.seed = seed
        self.options = {
            "vocab_size": vocab_size,
            "mask_id": mask_id,
            "special_ids": tuple(special_ids),
            "mask_prob": mask_prob,
            "mask_fraction": mask_fraction,
            "random_fraction": random_fraction,
        }

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Tensor]]]:
        generator = (
            torch.Generator().manual_seed(self.seed)
            if self.mode == "fixed" and self.objective == "masked"
            else None
        )
        for inputs, targets in self.loader:
            tokens = inputs["tokens"] if isinstance(inputs, Mapping) else inputs
            if self.task in targets:
                raise TaskDataError(
                    f"LM loader: the batch already has targets for task '{self.task}'"
                )
            if self.objective == "causal":
                new_tokens, lm_target = tokens, next_token_targets(tokens)
            elif self.mode == "clean":
                new_tokens, lm_target = tokens, torch.full_like(tokens, IGNORE_INDEX)
            else:
                new_tokens, lm_target = mask_tokens(tokens, generator=generator, **self.options)
            is_map = isinstance(inputs, Mapping)
            inputs = {**inputs, "tokens": new_tokens} if is_map else new_tokens
            yield inputs, {**targets, self.task: lm_target}


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


def check_lm_encoder(encoder: nn.Module, objective: Objective) -> None:
    """Raise when next-token prediction would read the answer: a causal LM needs an encoder
    whose position t sees only positions ≤ t (``token`` with ``causal=True``)."""
    if objective == "causal" and not bool(getattr(encoder, "causal", False)):
        raise ConfigError(
            f"causal LM: encoder {type(encoder).__name__} is not causal, so position t sees the "
            "word it must predict; use the 'token' encoder with kind 'transformer', causal=True"
        )


__all__ = [
    "CAUSAL_LM",
    "MASKED_LM",
    "LMHead",
    "LMLoader",
    "check_lm_encoder",
    "lm_task",
    "mask_tokens",
    "next_token_targets",
    "perplexity",
    "token_macro_f1",
]
