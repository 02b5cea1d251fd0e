"""The classification accumulators, batch by batch without selecting entries, give the
metrics computed over the whole split; their counts are the per-class counts."""

from __future__ import annotations

import pytest
import torch

from mtlkit.tasks.tabular import (
    CONFUSION_CLASSES,
    AccuracySums,
    MacroF1Sums,
    accuracy,
    class_counts,
    macro_f1,
    masked_class_counts,
)


def _split(seed: int, classes: int, ignore: float, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(n, classes, generator=g)
    target = torch.randint(0, classes, (n,), generator=g)
    target[torch.rand(n, generator=g) < ignore] = -100
    return output, target


@pytest.mark.parametrize("classes", [2, 7, CONFUSION_CLASSES, CONFUSION_CLASSES + 1])
@pytest.mark.parametrize("ignore", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_batched_metrics_equal_the_whole_split(classes: int, ignore: float, seed: int) -> None:
    output, target = _split(seed, classes, ignore)
    acc, f1 = AccuracySums(), MacroF1Sums()
    for start in range(0, len(target), 64):
        acc.update(output[start : start + 64], target[start : start + 64])
        f1.update(output[start : start + 64], target[start : start + 64])
    expected_acc, expected_f1 = accuracy(output, target), macro_f1(output, target)
    if ignore == 1.0:
        assert acc.compute() != acc.compute() and f1.compute() != f1.compute()  # NaN
        return
    assert acc.compute() == pytest.approx(expected_acc, abs=1e-12)
    assert f1.compute() == pytest.approx(expected_f1, abs=1e-12)


@pytest.mark.parametrize("classes", [3, CONFUSION_CLASSES + 2])
def test_masked_counts_are_the_counts_of_the_labelled_entries(classes: int) -> None:
    output, target = _split(5, classes, 0.3)
    pred = output.argmax(dim=1)
    keep = target != -100
    got = masked_class_counts(pred, target, keep, classes)
    expected = class_counts(pred[keep], target[keep])
    for key in ("tp", "pred", "gold"):
        size = expected[key].shape[0]
        assert got[key].shape[0] == classes and torch.equal(got[key][:size], expected[key])
        assert not got[key][size:].any()


def test_a_label_above_the_classes_is_still_counted() -> None:
    """Unchecked data: a label no output scores falls back to counts that grow with it."""
    pred = torch.tensor([0, 1, 2, 1])
    target = torch.tensor([0, 1, 5, -100])
    got = masked_class_counts(pred, target, target != -100, 3)
    assert got["gold"].tolist() == [1, 1, 0, 0, 0, 1]
    assert got["pred"].tolist() == [1, 1, 1, 0, 0, 0]
    assert got["tp"].tolist() == [1, 1, 0, 0, 0, 0]
