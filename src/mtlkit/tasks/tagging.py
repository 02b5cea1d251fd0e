"""Token tagging: one class per token (part of speech, BIO entity tags), and its metrics.

Importing this module registers:

- task kind ``tagging``: output ``(B, L, C)`` per-token logits, target ``(B, L)``; loss
  ``token_cross_entropy``; metrics ``token_accuracy``;
- task kind ``bio_tagging``: the same for BIO entity tags; metrics ``entity_f1``,
  ``token_accuracy``;
- loss ``token_cross_entropy``: cross-entropy over the last dim, mean over labelled tokens;
- metrics ``token_accuracy``, ``entity_f1`` and ``token_macro_f1`` (per-token F1 averaged over
  classes).

Positions whose target is ``-100`` (padding, or sub-word pieces after the first) are left out
of the loss and of every metric, in the output and in the target alike. A batch with nothing
labelled has an exact zero loss that still depends on the output (so backward runs and sends
zero gradient), as in :mod:`mtlkit.tasks.losses`.

Entity F1 follows the CoNLL-2000/2003 evaluation script ``conlleval`` (Tjong Kim Sang &
Buchholz, 2000, "Introduction to the CoNLL-2000 Shared Task: Chunking", CoNLL), which is also
the default mode of ``seqeval``: an entity counts as correct only when its type, first and
last token all match exactly (micro-averaged over all entities of the split). Chunks are
read leniently, as ``conlleval`` does: an ``I-X`` that follows ``O`` or a tag of another type
opens a new ``X`` entity instead of being dropped.

The label names fix which class index is which tag. The registered metric ``entity_f1`` uses
the layout of the CoNLL-2003 and WikiANN releases: index 0 is ``O`` and, for entity type k
(k = 1, 2, ...), index 2k − 1 is ``B-k`` and 2k is ``I-k``. Any other layout is given by name
with :func:`entity_f1_metric` or :func:`bind_labels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks._task import TASK_KINDS, Task, TaskKind
from mtlkit.tasks.losses import IGNORE_INDEX, LOSSES, empty_loss
from mtlkit.tasks.metrics import Metric, Sums, metric
from mtlkit.tasks.tabular import class_counts, class_f1, ratio

Span = tuple[int, int, str]
"""An entity: first token, last token (inclusive) and type."""


def _check_tokens(output: Tensor, target: Tensor, what: str) -> None:
    if output.dim() != target.dim() + 1 or tuple(output.shape[:-1]) != tuple(target.shape):
        raise TaskDataError(
            f"{what}: output shape {tuple(output.shape)} does not fit target shape "
            f"{tuple(target.shape)} (expected output (*target.shape, num_classes))"
        )


def token_pairs(output: Tensor, target: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """The ``(N, C)`` logits and ``(N,)`` labels of the labelled tokens (target ≠ -100), after
    checking that ``output`` is ``(*target.shape, C)``; ``what`` names the metric in errors."""
    _check_tokens(output, target, f"metric '{what}'")
    keep = target != IGNORE_INDEX
    return output[keep], target[keep].long()


# --------------------------------------------------------------------------- kinds and loss


@dataclass(frozen=True)
class TokenKind(TaskKind):
    """A per-token classification kind: outputs ``(B, L, C)`` for targets ``(B, L)``.

    Token encoders keep the sequence in dim 1 and features last, so the class dimension of
    the output is the last one, not dim 1 as for images.
    """

    def expected_output_shape(self, target: Tensor, num_outputs: int) -> tuple[int, ...]:
        return (*target.shape, num_outputs)


TAGGING = TokenKind("tagging", "token_cross_entropy", ("token_accuracy",), True, True)
BIO_TAGGING = TokenKind(
    "bio_tagging", "token_cross_entropy", ("entity_f1", "token_accuracy"), True, True
)
for _kind in (TAGGING, BIO_TAGGING):
    TASK_KINDS.register(_kind.name, _kind)


@LOSSES.register("token_cross_entropy")
def token_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the last dim of ``(B, L, C)`` logits, mean over tokens ≠ -100."""
    expected = (*target.shape, output.shape[-1])
    if tuple(output.shape) != expected:
        raise TaskDataError(
            f"loss 'token_cross_entropy': output shape {tuple(output.shape)} does not fit "
            f"target shape {tuple(target.shape)} (expected output {expected})"
        )
    if not bool((target != IGNORE_INDEX).any()):
        return empty_loss(output)
    return F.cross_entropy(
        output.float().reshape(-1, output.shape[-1]),
        target.long().reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


# --------------------------------------------------------------------------- metrics


class TokenAccuracySums(Sums):
    """``token_accuracy`` batch by batch: correct and labelled tokens."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        logits, tgt = token_pairs(output, target, "token_accuracy")
        return {"correct": (logits.argmax(dim=-1) == tgt).sum(), "count": torch.tensor(len(tgt))}

    def value(self, sums: dict[str, Tensor]) -> float:
        return ratio(sums, "correct")


class TokenF1Sums(Sums):
    """``token_macro_f1`` batch by batch: per-class true positives, predictions and labels."""

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        logits, tgt = token_pairs(output, target, "token_macro_f1")
        return class_counts(logits.argmax(dim=-1), tgt)

    def value(self, sums: dict[str, Tensor]) -> float:
        return class_f1(sums)


@metric("token_accuracy", "max", TokenAccuracySums)
def token_accuracy(output: Tensor, target: Tensor) -> float:
    """Share of labelled tokens (target ≠ -100) whose argmax class equals the target."""
    _check_tokens(output, target, "metric 'token_accuracy'")
    keep = target != IGNORE_INDEX
    if not bool(keep.any()):
        return math.nan
    pred = output.argmax(dim=-1)
    return float((pred[keep] == target[keep]).double().mean())


@metric("token_macro_f1", "max", TokenF1Sums)
def token_macro_f1(output: Tensor, target: Tensor) -> float:
    """Per-token F1 averaged over the classes that occur in the target or the prediction
    (the argmax over the last dim of ``(B, L, C)`` logits; targets -100 left out)."""
    logits, tgt = token_pairs(output, target, "token_macro_f1")
    if tgt.numel() == 0:
        return math.nan
    pred = logits.argmax(dim=-1)
    classes = torch.unique(torch.cat([pred, tgt]))
    p, t = pred.unsqueeze(1) == classes, tgt.unsqueeze(1) == classes
    tp = (p & t).sum(0).double()
    denom = p.sum(0).double() + t.sum(0).double()
    return float(np.mean((2 * tp / denom).numpy()))


# --------------------------------------------------------------------------- entity F1


def check_bio_labels(labels: Sequence[str], where: str = "entity F1") -> list[str]:
    """Return ``labels`` as a list after checking that each is ``O``, ``B-type`` or ``I-type``."""
    out = list(labels)
    if not out:
        raise ConfigError(f"{where}: option 'labels' must name at least one tag")
    for name in out:
        if not isinstance(name, str) or not (
            name == "O" or (name[:2] in ("B-", "I-") and len(name) > 2)
        ):
            raise ConfigError(
                f"{where}: option 'labels' must hold BIO tags ('O', 'B-TYPE', 'I-TYPE'), "
                f"got {name!r}"
            )
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: option 'labels' repeats a tag: {out}")
    return out


def bio_spans(tags: Sequence[str]) -> set[Span]:
    """The entities of one BIO-tagged sequence, read as ``conlleval`` does.

    An entity starts at ``B-X``, or at ``I-X`` when the previous tag is ``O`` or of another
    type; it ends before ``O``, before any ``B-``, and before an ``I-`` of another type.

    >>> sorted(bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]))
    [(0, 1, 'PER'), (3, 3, 'LOC'), (4, 4, 'LOC'), (5, 5, 'ORG')]
    """
    spans: set[Span] = set()
    start, kind = -1, ""
    for i, tag in enumerate(tags):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ and start >= 0
        if start >= 0 and not continues:
            spans.add((start, i - 1, kind))
            start, kind = -1, ""
        if prefix in ("B", "I") and not continues:
            start, kind = i, typ
    if start >= 0:
        spans.add((start, len(tags) - 1, kind))
    return spans


def conll_labels(num_classes: int) -> list[str]:
    """Tag names of the CoNLL-2003 layout: ``O``, then ``B-k``, ``I-k`` for k = 1, 2, ...

    ``num_classes`` must be odd (``O`` plus a B/I pair per type).
    """
    if num_classes < 3 or num_classes % 2 == 0:
        raise TaskDataError(
            f"metric 'entity_f1': {num_classes} classes do not fit the default BIO layout "
            "(O, B-1, I-1, B-2, I-2, ...: an odd count ≥ 3); pass the tag names with "
            "mtlkit.tasks.tagging.bind_labels(task, labels)"
        )
    names = ["O"]
    for k in range(1, (num_classes - 1) // 2 + 1):
        names += [f"B-{k}", f"I-{k}"]
    return names


def entity_counts(output: Tensor, target: Tensor, labels: Sequence[str]) -> tuple[int, int, int]:
    """(correct, predicted, gold) entity counts over a split of tagged sequences.

    Each sequence is reduced to its labelled positions (target ≠ -100) before its entities
    are read, so padding and ignored sub-word pieces neither break nor create entities.
    """
    _check_tokens(output, target, "metric 'entity_f1'")
    if output.shape[-1] != len(labels):
        raise TaskDataError(
            f"metric 'entity_f1': the output has {output.shape[-1]} classes but "
            f"{len(labels)} tag names were given"
        )
    pred = output.argmax(dim=-1).reshape(-1, target.shape[-1]).tolist()
    gold = target.reshape(-1, target.shape[-1]).tolist()
    correct = n_pred = n_gold = 0
    for p_row, g_row in zip(pred, gold, strict=True):
        kept = [(p, g) for p, g in zip(p_row, g_row, strict=True) if g != IGNORE_INDEX]
        p_spans = bio_spans([labels[p] for p, _ in kept])
        g_spans = bio_spans([labels[g] for _, g in kept])
        correct += len(p_spans & g_spans)
        n_pred += len(p_spans)
        n_gold += len(g_spans)
    return correct, n_pred, n_gold


def entity_f1(output: Tensor, target: Tensor, labels: Sequence[str] | None = None) -> float:
    """Micro-averaged entity F1 = 2PR / (P + R) with exact span matching.

    NaN when the split has neither gold nor predicted entities (F1 is undefined); 0 when only
    one side has entities. ``labels`` names the tag of each class index (CoNLL-2003 layout
    when omitted).
    """
    names = check_bio_labels(labels) if labels is not None else conll_labels(output.shape[-1])
    correct, n_pred, n_gold = entity_counts(output, target, names)
    if n_pred + n_gold == 0:
        return math.nan
    return 2.0 * correct / (n_pred + n_gold)


class EntitySums(Sums):
    """``entity_f1`` batch by batch: correct, predicted and gold entity counts (entities lie
    within one sequence, so the counts add up over batches)."""

    def __init__(self, labels: Sequence[str] | None = None) -> None:
        super().__init__()
        self.labels = None if labels is None else check_bio_labels(labels)

    def stats(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        names = self.labels if self.labels is not None else conll_labels(output.shape[-1])
        return dict(
            zip(
                ("correct", "pred", "gold"),
                map(torch.tensor, entity_counts(output, target, names)),
                strict=True,
            )
        )

    def value(self, sums: dict[str, Tensor]) -> float:
        if "correct" not in sums or int(sums["pred"] + sums["gold"]) == 0:
            return math.nan
        return 2.0 * int(sums["correct"]) / int(sums["pred"] + sums["gold"])


@metric("entity_f1", "max", EntitySums)
def entity_f1_conll(output: Tensor, target: Tensor) -> float:
    """Entity F1 for tags in the CoNLL-2003 layout (O = 0, B-k = 2k − 1, I-k = 2k)."""
    return entity_f1(output, target)


def entity_f1_metric(labels: Sequence[str]) -> Metric:
    """An ``entity_f1`` metric for the tag names ``labels`` (one per class index)."""
    names = check_bio_labels(labels)
    return Metric("entity_f1", partial(entity_f1, labels=names), "max", partial(EntitySums, names))


def bind_labels(task: Task, labels: Sequence[str]) -> None:
    """Make a tagging task's ``entity_f1`` metric read class indices as the tags ``labels``.

    The task's metrics must include ``entity_f1``, and the number of tag names must equal its
    ``num_outputs``.
    """
    names = check_bio_labels(labels, f"task '{task.name}'")
    if len(names) != task.num_outputs:
        raise ConfigError(
            f"task '{task.name}': option 'labels' has {len(names)} tags but num_outputs is "
            f"{task.num_outputs}"
        )
    if "entity_f1" not in task.metric_fns:
        raise ConfigError(f"task '{task.name}': option 'labels' needs the metric 'entity_f1'")
    task.metric_fns["entity_f1"] = entity_f1_metric(names)


__all__ = [
    "BIO_TAGGING",
    "TAGGING",
    "EntitySums",
    "TokenAccuracySums",
    "TokenF1Sums",
    "TokenKind",
    "bind_labels",
    "bio_spans",
    "check_bio_labels",
    "conll_labels",
    "entity_counts",
    "entity_f1",
    "entity_f1_metric",
    "token_accuracy",
    "token_cross_entropy",
    "token_macro_f1",
    "token_pairs",
]
