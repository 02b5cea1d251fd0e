"""Language-modelling batches: BERT's dynamic masking, next-token targets, :class:`LMLoader`.

The task side (kinds ``masked_lm`` and ``causal_lm``, metric ``perplexity``,
:func:`mtlkit.tasks.lm.lm_task`) is in :mod:`mtlkit.tasks.lm`; the head is
:class:`mtlkit.nn.lm.LMHead`.

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

Word ids follow the vocabularies of :mod:`mtlkit.data.conll.vocab`: 0 = ``<pad>`` (the padding id
of the ``token`` encoder), 1 = ``<unk>``, 2 = ``<mask>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks import IGNORE_INDEX
from mtlkit.tasks.lm import Objective

Mode = Literal["dynamic", "fixed", "clean"]


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


def next_token_targets(tokens: Tensor, pad_id: int = 0) -> Tensor:
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
            :func:`mask_tokens`; the defaults fit :mod:`mtlkit.data.conll.vocab` vocabularies.
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


__all__ = ["LMLoader", "Mode", "mask_tokens", "next_token_targets"]
