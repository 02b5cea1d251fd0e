"""Token accuracy and entity-level F1 on hand-made BIO sequences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks import METRICS, Task
from mtlkit.tasks.tagging import (
    bind_labels,
    bio_spans,
    conll_labels,
    entity_f1,
    entity_f1_metric,
    token_accuracy,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def logits(ids: list[list[int]], num_classes: int = len(LABELS)) -> Tensor:
    """One-hot logits whose argmax is ``ids`` (shape (B, L, C))."""
    return torch.nn.functional.one_hot(torch.tensor(ids).clamp_min(0), num_classes).float()


def test_spans_follow_conlleval() -> None:
    # B-PER I-PER      -> PER over tokens 0..1
    # O I-LOC          -> an I- after O opens a LOC entity at 3
    # B-LOC            -> a B- always opens a new entity, even after the same type
    # I-PER after LOC  -> a type change opens a PER entity at 5
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER", "I-PER"]
    assert bio_spans(tags) == {(0, 1, "PER"), (3, 3, "LOC"), (4, 4, "LOC"), (5, 6, "PER")}
    assert bio_spans([]) == set()
    assert bio_spans(["O", "O"]) == set()
    assert bio_spans(["I-PER"]) == {(0, 0, "PER")}


def test_entity_f1_exact_span_matching() -> None:
    # gold:  B-PER I-PER O     B-LOC | B-LOC I-LOC O
    # pred:  B-PER O     O     B-LOC | O     I-LOC O
    # gold entities: PER(0,1) LOC(3,3) | LOC(0,1)                -> 3
    # pred entities: PER(0,0) LOC(3,3) | LOC(1,1) (I- after O)   -> 3
    # correct: LOC(3,3) only -> P = R = 1/3 -> F1 = 1/3
    gold = torch.tensor([[1, 2, 0, 3], [3, 4, 0, -100]])
    pred = logits([[1, 0, 0, 3], [0, 4, 0, 0]])
    assert entity_f1(pred, gold, LABELS) == pytest.approx(1 / 3)


def test_entity_f1_precision_recall_asymmetry() -> None:
    # gold: B-PER I-PER O B-LOC   (2 entities)
    # pred: B-PER I-PER O O       (1 entity, correct)
    # P = 1, R = 1/2 -> F1 = 2·1·0.5 / 1.5 = 2/3
    gold = torch.tensor([[1, 2, 0, 3]])
    pred = logits([[1, 2, 0, 0]])
    assert entity_f1(pred, gold, LABELS) == pytest.approx(2 / 3)


def test_ignored_positions_are_removed_before_reading_spans() -> None:
    # gold: B-PER [-100] I-PER -> after removal B-PER I-PER: one PER entity over 2 tokens.
    # The prediction at the ignored position (O) must not split the entity.
    gold = torch.tensor([[1, -100, 2, -100]])
    pred = logits([[1, 0, 2, 3]])
    assert entity_f1(pred, gold, LABELS) == 1.0
    assert token_accuracy(pred, gold) == 1.0


def test_entity_f1_degenerate_cases() -> None:
    gold = torch.tensor([[0, 0, 0]])
    assert math.isnan(entity_f1(logits([[0, 0, 0]]), gold, LABELS))
    assert entity_f1(logits([[1, 0, 0]]), gold, LABELS) == 0.0


def test_registered_entity_f1_uses_conll_layout() -> None:
    assert conll_labels(5) == ["O", "B-1", "I-1", "B-2", "I-2"]
    gold = torch.tensor([[1, 2, 0, 3], [3, 4, 0, -100]])
    pred = logits([[1, 0, 0, 3], [0, 4, 0, 0]])
    assert METRICS.lookup("entity_f1")(pred, gold) == pytest.approx(1 / 3)
    assert METRICS.lookup("entity_f1").direction == "max"
    with pytest.raises(TaskDataError, match="default BIO layout"):
        METRICS.lookup("entity_f1")(logits([[0]], 4), torch.tensor([[0]]))


def test_token_accuracy_counts_labelled_tokens_only() -> None:
    # labelled tokens: row 0 gold 1 2 0 / pred 1 0 0 -> 2 right of 3;
    # row 1 gold 3 4 . 0 / pred 3 3 . 0 -> 2 right of 3; the -100 positions are ignored.
    gold = torch.tensor([[1, 2, 0, -100], [3, 4, -100, 0]])
    pred = logits([[1, 0, 0, 4], [3, 3, 2, 0]])
    assert token_accuracy(pred, gold) == pytest.approx(4 / 6)
    assert math.isnan(token_accuracy(pred, torch.full((2, 4), -100)))
    with pytest.raises(TaskDataError, match="does not fit"):
        token_accuracy(pred.transpose(1, 2), gold)


def test_bind_labels_on_a_task_with_another_layout() -> None:
    # Layout with types first: O=2 here, so the CoNLL default would read it wrongly.
    labels = ["B-PER", "I-PER", "O"]
    task = Task("ner", "bio_tagging", num_outputs=3)
    bind_labels(task, labels)
    gold = torch.tensor([[0, 1, 2]])  # B-PER I-PER O
    metrics = task.compute_metrics(logits([[0, 1, 2]], 3), gold)
    assert metrics == {"entity_f1": 1.0, "token_accuracy": 1.0}
    assert entity_f1_metric(labels)(logits([[0, 2, 2]], 3), gold) == 0.0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["O", "PER"], "BIO tags"),
        (["O", "B-PER", "B-PER"], "repeats"),
        ([], "at least one"),
        (["O", "B-PER"], "num_outputs is 3"),
    ],
)
def test_bad_labels_are_config_errors(labels: list[str], message: str) -> None:
    task = Task("ner", "bio_tagging", num_outputs=3)
    with pytest.raises(ConfigError, match=message):
        bind_labels(task, labels)


def test_bind_labels_needs_the_metric() -> None:
    task = Task("pos", "tagging", num_outputs=3)
    with pytest.raises(ConfigError, match="entity_f1"):
        bind_labels(task, ["O", "B-X", "I-X"])
