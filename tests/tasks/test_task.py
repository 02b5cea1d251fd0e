"""Tasks check what they are given and name the task and field at fault."""

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks import Task


def test_defaults_follow_the_kind() -> None:
    task = Task("t", "classification", 4)
    assert task.metrics == ["accuracy", "macro_f1"]
    assert task.primary_metric == "accuracy"
    reg = Task("r", "regression", 2)
    assert reg.metrics == ["mae", "rmse", "r2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "nope"}, "field 'kind': unknown task kind 'nope'; available: binary"),
        ({"kind": "classification", "num_outputs": 1}, "num_outputs ≥ 2"),
        ({"kind": "regression", "loss": "nope"}, "field 'loss': unknown loss 'nope'"),
        ({"kind": "regression", "metrics": ["nope"]}, "field 'metrics': unknown metric"),
        ({"kind": "regression", "weight": -1.0}, "field 'weight'"),
    ],
)
def test_bad_task_definitions(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Task("depth", **kwargs)


def test_label_out_of_range_names_task_and_label() -> None:
    task = Task("left", "classification", 10)
    with pytest.raises(
        TaskDataError, match=r"task 'left': class label 12 is out of range \[0, 10\)"
    ):
        task.compute_loss(torch.zeros(3, 10), torch.tensor([1, 12, 3]))
    with pytest.raises(TaskDataError, match="class label -3"):
        task.compute_loss(torch.zeros(3, 10), torch.tensor([1, -3, 3]))
    # the ignore value is allowed
    task.compute_loss(torch.zeros(3, 10), torch.tensor([1, -100, 3]))


def test_shape_mismatch_names_both_shapes() -> None:
    task = Task("depth", "regression", 1)
    with pytest.raises(
        TaskDataError,
        match=r"task 'depth': target shape \(8, 1, 4, 4\) does not "
        r"fit head output \(8, 3, 4, 4\)",
    ):
        task.compute_loss(torch.zeros(8, 3, 4, 4), torch.zeros(8, 1, 4, 4))
    cls = Task("c", "classification", 3)
    with pytest.raises(TaskDataError, match="does not fit head output"):
        cls.compute_loss(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))


def test_wrong_dtypes() -> None:
    with pytest.raises(
        TaskDataError, match=r"task .c.: target dtype torch.float32 is not an integer"
    ):
        Task("c", "classification", 3).compute_loss(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(TaskDataError, match=r"task .r.: target dtype torch.int64 is not floating"):
        Task("r", "regression", 1).compute_loss(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TaskDataError, match="only 0 and 1"):
        Task("b", "binary", 1).compute_loss(torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 1.0]))


def test_regression_output_with_trailing_singleton_fits() -> None:
    loss = Task("r", "regression", 1).compute_loss(torch.ones(4, 1), torch.zeros(4))
    assert loss.item() == pytest.approx(1.0)


def test_all_missing_labels_give_zero_loss_and_zero_gradient() -> None:
    out = torch.randn(4, 3, requires_grad=True)
    loss = Task("c", "classification", 3).compute_loss(out, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(out.grad, torch.zeros_like(out))


def test_segmentation_ignore_labels_pass_the_range_check() -> None:
    task = Task("seg", "segmentation", 3)
    target = torch.tensor([[[0, 255], [-1, 2]]])
    loss = task.compute_loss(torch.zeros(1, 3, 2, 2), target)
    assert torch.isfinite(loss)
    with pytest.raises(TaskDataError, match="class label 7"):
        task.compute_loss(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 7], [-1, 2]]]))
