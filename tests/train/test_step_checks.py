"""The training step's batched checks (one read-back for every task's labels) agree with the
per-task checks they replace: same losses, same label counts, same errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit.errors import TaskDataError
from mtlkit.nn import build_model
from mtlkit.tasks import Task
from mtlkit.train.batches import checked_losses, labelled_losses
from mtlkit.train.trainer import regularizer

TASKS = {
    "a": Task("a", "classification", num_outputs=5),
    "b": Task("b", "classification", num_outputs=3),
    "r": Task("r", "regression"),
}


def _reference(outputs, targets):
    """Each task checked and its loss computed on its own, labels counted by their mask."""
    losses = {t: TASKS[t].compute_loss(outputs[t], targets[t], True) for t in TASKS}
    counts = {t: int(TASKS[t].label_mask(targets[t]).sum()) for t in TASKS}
    return losses, counts


def _batch(seed: int, ignore: float = 0.0, bad: int | None = None):
    g = torch.Generator().manual_seed(seed)
    n = 16
    outputs = {
        "a": torch.randn(n, 5, generator=g),
        "b": torch.randn(n, 3, generator=g),
        "r": torch.randn(n, generator=g),
    }
    targets = {
        "a": torch.randint(0, 5, (n,), generator=g),
        "b": torch.randint(0, 3, (n,), generator=g),
        "r": torch.randn(n, generator=g),
    }
    drop = torch.rand(n, generator=g) < ignore
    targets["b"][drop] = -100
    targets["r"][drop] = float("nan")
    if bad is not None:
        targets["b"][n // 2] = bad
    return outputs, targets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ignore", [0.0, 0.3, 1.0])
def test_losses_and_counts_agree_with_the_per_task_checks(seed: int, ignore: float) -> None:
    outputs, targets = _batch(seed, ignore)
    losses, known = checked_losses(TASKS, outputs, targets, True)
    reference, counts = _reference(outputs, targets)
    for name in TASKS:
        # a task known to be fully labelled takes the unmasked mean: the same value up to
        # the order of one division
        torch.testing.assert_close(losses[name], reference[name], rtol=1e-6, atol=0, equal_nan=True)
    assert known == ({"a": 16, "b": 16} if ignore == 0.0 else {"a": 16})
    present, got = labelled_losses(TASKS, losses, targets, known)
    assert got == counts
    assert [t for t, v in present.items() if v is not None] == [t for t in TASKS if counts[t]]


@pytest.mark.parametrize("ignore", [0.0, 0.3])
def test_the_unmasked_loss_is_taken_only_for_targets_the_check_found_fully_labelled(
    ignore: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs, targets = _batch(5, ignore)
    taken: list[str] = []
    for name in ("a", "b"):
        task, plain = TASKS[name], TASKS[name].labelled_loss_fn

        def spy(out: torch.Tensor, tgt: torch.Tensor, name=name, plain=plain) -> torch.Tensor:
            taken.append(name)
            return plain(out, tgt)

        monkeypatch.setattr(task, "labelled_loss_fn", spy)
    checked_losses(TASKS, outputs, targets, True)
    assert taken == (["a", "b"] if ignore == 0.0 else ["a"])
    taken.clear()
    checked_losses(TASKS, outputs, targets, False)  # unchecked: nothing is known
    assert taken == []


@pytest.mark.parametrize("bad", [3, 7, -1, -5, -101])
@pytest.mark.parametrize("ignore", [0.0, 0.3])
def test_a_label_out_of_range_is_the_same_error(bad: int, ignore: float) -> None:
    outputs, targets = _batch(1, ignore, bad)
    with pytest.raises(TaskDataError) as expected:
        TASKS["b"].check(outputs["b"], targets["b"])
    with pytest.raises(TaskDataError) as got:
        checked_losses(TASKS, outputs, targets, True)
    assert str(got.value) == str(expected.value)
    assert "task 'b'" in str(got.value) and f"class label {bad}" in str(got.value)


def test_without_checks_nothing_is_known_and_counts_come_from_the_masks() -> None:
    outputs, targets = _batch(2, 0.3)
    losses, known = checked_losses(TASKS, outputs, targets, False)
    assert known == {}
    assert labelled_losses(TASKS, losses, targets, known)[1] == _reference(outputs, targets)[1]


def test_multi_input_tasks_are_those_of_the_targets() -> None:
    outputs, targets = _batch(3)
    only = {"b": targets["b"]}
    losses, known = checked_losses(TASKS, outputs, only, True, every_task=False)
    assert list(losses) == ["b"] and known == {"b": 16}


def test_a_shape_error_still_names_the_task() -> None:
    outputs, targets = _batch(4)
    outputs["a"] = outputs["a"][:, :4]
    with pytest.raises(TaskDataError, match=r"task 'a'.*does not fit head output"):
        checked_losses(TASKS, outputs, targets, True)


class _Encoder(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 8), nn.ReLU())
        self.out_features = 8


def test_the_default_regulariser_is_never_asked_for_and_an_own_one_is() -> None:
    tasks = [Task("a", "regression")]
    assert regularizer(build_model("hps", _Encoder(), tasks)) is None
    assert regularizer(nn.Linear(2, 2)) is None

    class Penalised(nn.Linear):
        def regularization(self) -> torch.Tensor:
            return self.weight.square().sum()

    model = Penalised(2, 2)
    function = regularizer(model)
    assert function is not None and torch.equal(function(), model.weight.square().sum())
