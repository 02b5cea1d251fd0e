"""Heads with their task kinds and losses: shapes, ignored labels, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.architectures.base import build_head
from mtlkit.nn.dense import DenseHead
from mtlkit.nn.heads import HEADS
from mtlkit.tasks import LOSSES, Task

NAN = float("nan")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- dense head


def test_dense_head_output_sizes() -> None:
    feats = torch.randn(2, 8, 4, 6)
    head = HEADS.build("dense", 8, 5, hidden=(4,))
    assert head(feats).shape == (2, 5, 4, 6)
    assert HEADS.build("dense", 8, 5, out_size=(16, 24))(feats).shape == (2, 5, 16, 24)
    assert HEADS.build("dense", 8, 1, out_size=10)(feats).shape == (2, 1, 10, 10)
    assert HEADS.build("dense", 8, 3, scale_factor=4)(feats).shape == (2, 3, 16, 24)
    # the size given at call time wins over out_size
    assert HEADS.build("dense", 8, 3, out_size=7)(feats, size=(9, 5)).shape == (2, 3, 9, 5)


def test_dense_head_without_resizing_is_convolutional() -> None:
    # With the 1×1 conv alone (hidden=()), each output pixel is W·x + b of its own feature.
    head = DenseHead(4, 2, hidden=())
    feats = torch.randn(1, 4, 3, 5)
    conv = head.net[-1]
    expected = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], feats)
    expected = expected + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(head(feats), expected)


@pytest.mark.parametrize(
    ("params", "option"),
    [
        ({"hidden": (0,)}, "hidden"),
        ({"out_size": (4, 0)}, "out_size"),
        ({"out_size": (4, 4, 4)}, "out_size"),
        ({"scale_factor": 0}, "scale_factor"),
        ({"dropout": 1.0}, "dropout"),
        ({"size": 3}, "size"),
    ],
)
def test_dense_head_bad_options(params: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=f"head 'dense'.*{option}"):
        HEADS.build("dense", 8, 3, **params)


def test_dense_head_rejects_pooled_features() -> None:
    with pytest.raises(TaskDataError, match=r"feature map \(B, 8, h, w\)"):
        DenseHead(8, 3)(torch.randn(2, 8))


def test_dense_head_size_mismatch_names_task_and_shapes() -> None:
    task = Task("seg", "segmentation", num_outputs=3, head="dense", head_params={"out_size": 8})
    head = build_head(task, 4)
    out = head(torch.randn(2, 4, 2, 2))
    target = torch.zeros(2, 6, 8, dtype=torch.long)
    with pytest.raises(TaskDataError) as err:
        task.compute_loss(out, target)
    message = str(err.value)
    assert "task 'seg'" in message and "(2, 6, 8)" in message and "(2, 3, 8, 8)" in message


def test_build_head_names_task_on_bad_option() -> None:
    task = Task("depth", "depth", head="dense", head_params={"scale_factor": -1.0})
    with pytest.raises(ConfigError, match=r"task 'depth': field 'head'.*scale_factor"):
        build_head(task, 4)


# --------------------------------------------------------------------------- segmentation


def test_segmentation_loss_ignores_255_and_minus_one() -> None:
    out = torch.randn(2, 3, 2, 3, requires_grad=True)
    target = torch.tensor(
        [
            [[0, 1, 2], [255, 1, -1]],
            [
                [
                    2,
                    2,
                    -100,
                ],
                [0, 255, 1],
            ],
        ]
    )
    loss = LOSSES.lookup("segmentation_cross_entropy")(out, target)
    keep = (target >= 0) & (target < 3)
    manual = F.cross_entropy(out.permute(0, 2, 3, 1)[keep], target[keep])
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert out.grad is not None
    assert bool((out.grad.permute(0, 2, 3, 1)[~keep] == 0).all())
    assert bool((out.grad.permute(0, 2, 3, 1)[keep].abs().sum(-1) > 0).all())


def test_segmentation_all_ignored_is_zero_with_gradient() -> None:
    out = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = LOSSES.lookup("segmentation_cross_entropy")(out, torch.full((1, 2, 2), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool((out.grad == 0).all())


def test_segmentation_task_end_to_end() -> None:
    task = Task("seg", "segmentation", num_outputs=4, head="dense", head_params={"out_size": 6})
    assert task.metrics == ["miou", "pixel_accuracy"]
    head = build_head(task, 5)
    feats = torch.randn(2, 5, 3, 3, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6))
    loss = task.compute_loss(head(feats), target)
    loss.backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in head.parameters())


# --------------------------------------------------------------------------- depth


def test_depth_loss_by_hand_and_valid_pixels() -> None:
    # target 1 2 0 / 4 nan 0.5, prediction 1.5 1 9 / 5 3 1: valid errors 0.5 1 1 0.5 -> 3/4
    target = torch.tensor([[[1.0, 2.0, 0.0], [4.0, NAN, 0.5]]])
    out = torch.tensor([[[[1.5, 1.0, 9.0], [5.0, 3.0, 1.0]]]], requires_grad=True)
    task = Task("depth", "depth")
    assert task.metrics == ["depth_abs_err", "depth_rel_err"]
    loss = task.compute_loss(out, target)
    assert float(loss.detach()) == pytest.approx(0.75)
    loss.backward()
    # d|x − d|/dx = sign / 4 at the 4 valid pixels, 0 where the target is 0 or NaN
    expected = torch.tensor([[[[0.25, -0.25, 0.0], [0.25, 0.0, 0.25]]]])
    torch.testing.assert_close(out.grad, expected)
    assert task.compute_metrics(out.detach(), target)["depth_rel_err"] == pytest.approx(9 / 16)


def test_depth_output_must_match_target_map() -> None:
    task = Task("depth", "depth")
    with pytest.raises(TaskDataError, match=r"task 'depth'.*\(2, 4, 4\).*\(2, 1, 4, 5\)"):
        task.compute_loss(torch.randn(2, 1, 4, 5), torch.rand(2, 4, 4))
    with pytest.raises(TaskDataError, match="depth_l1"):
        LOSSES.lookup("depth_l1")(torch.randn(2, 1, 4, 5), torch.rand(2, 4, 4))


# --------------------------------------------------------------------------- normals


def test_normal_loss_is_one_minus_cosine_over_valid_pixels() -> None:
    # Errors 0°, 60°, 90° at 3 valid pixels, one zero target: loss = mean(1 − cos θ)
    # = (0 + 0.5 + 1) / 3 = 0.5, whatever the vector lengths.
    theta = torch.deg2rad(torch.tensor([[0.0, 60.0], [90.0, 45.0]]))
    out = 3 * torch.stack([theta.sin(), torch.zeros_like(theta), theta.cos()]).unsqueeze(0)
    out.requires_grad_(True)
    target = torch.zeros(1, 3, 2, 2)
    target[0, 2] = 2.0
    target[0, :, 1, 1] = 0.0
    task = Task("normals", "normals", num_outputs=3)
    loss = task.compute_loss(out, target)
    assert float(loss.detach()) == pytest.approx(0.5, abs=1e-6)
    loss.backward()
    assert bool((out.grad[0, :, 1, 1] == 0).all())
    assert float(out.grad[0, :, 0, 1].abs().sum()) > 0
    metrics = task.compute_metrics(out.detach(), target)
    assert metrics["normal_mean_angle"] == pytest.approx(50.0, abs=1e-4)


def test_normal_loss_needs_three_channels() -> None:
    with pytest.raises(TaskDataError, match="expected 3"):
        LOSSES.lookup("normal_cosine")(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2))


# --------------------------------------------------------------------------- token tagging


def test_linear_head_tags_tokens_and_loss_ignores_padding() -> None:
    task = Task("pos", "tagging", num_outputs=4)
    head = build_head(task, 6)
    feats = torch.randn(2, 5, 6, requires_grad=True)
    target = torch.tensor([[1, 2, 3, -100, -100], [0, 0, 1, 2, -100]])
    out = head(feats)
    assert out.shape == (2, 5, 4)
    loss = task.compute_loss(out, target)
    keep = target != -100
    torch.testing.assert_close(loss, F.cross_entropy(out[keep], target[keep]))
    loss.backward()
    assert bool((feats.grad[~keep] == 0).all())
    assert bool((feats.grad[keep].abs().sum(-1) > 0).all())


def test_tagging_shape_errors_name_the_task() -> None:
    task = Task("ner", "bio_tagging", num_outputs=5)
    with pytest.raises(TaskDataError, match=r"task 'ner'.*expected output \(2, 7, 5\)"):
        task.check(torch.randn(2, 5, 7), torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(TaskDataError, match="out of range"):
        task.check(torch.randn(2, 7, 5), torch.full((2, 7), 5))
    all_ignored = torch.randn(2, 7, 5, requires_grad=True)
    loss = task.compute_loss(all_ignored, torch.full((2, 7), -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool((all_ignored.grad == 0).all())


# --------------------------------------------------------------------------- per-sample kinds


def test_multilabel_bce_skips_missing_labels_and_f1_by_hand() -> None:
    task = Task("tags", "multilabel", num_outputs=3, head="mlp")
    head = build_head(task, 4)
    out = head(torch.randn(4, 4))
    target = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 1.0], [1.0, NAN, 0.0], [0.0, 0.0, 1.0]])
    loss = task.compute_loss(out, target)
    keep = torch.isfinite(target)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out[keep], target[keep]))
    # predictions (logit > 0):   label 0: 1 0 1 1 vs 1 0 1 0 -> tp 2 fp 1 fn 0 -> F1 4/5
    #                            label 1: 0 1 . 0 vs 0 1 . 0 -> tp 1          -> F1 1
    #                            label 2: . 0 0 1 vs . 1 0 1 -> tp 1 fn 1     -> F1 2/3
    logits = torch.tensor([[3.0, -1, 5], [-2, 2, -1], [1, 7, -3], [2, -1, 4]])
    assert task.compute_metrics(logits, target)["macro_f1_multilabel"] == pytest.approx(
        (4 / 5 + 1 + 2 / 3) / 3
    )


def test_regression_with_l1_loss() -> None:
    task = Task("price", "regression", num_outputs=1, loss="l1")
    out = torch.tensor([[1.0], [2.0], [5.0]])
    target = torch.tensor([2.0, NAN, 1.0])
    assert float(task.compute_loss(out, target)) == pytest.approx(2.5)  # (1 + 4) / 2
