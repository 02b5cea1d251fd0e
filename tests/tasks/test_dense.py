"""Dense metrics on small maps worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.tasks import METRICS
from mtlkit.tasks.dense import (
    confusion_matrix,
    depth_abs_err,
    depth_rel_err,
    miou,
    normal_angles,
    normal_mean_angle,
    normal_median_angle,
    normal_within_11_25,
    normal_within_22_5,
    normal_within_30,
    pixel_accuracy,
)

NAN = float("nan")


def seg_logits(pred: list[list[int]], num_classes: int) -> Tensor:
    """(1, C, H, W) logits whose argmax over dim 1 is ``pred``."""
    one_hot = torch.nn.functional.one_hot(torch.tensor(pred), num_classes).float()
    return one_hot.permute(2, 0, 1).unsqueeze(0)


# target       prediction
# 0 0 1        0 1 1
# 1 2 255      1 2 0
# 5 labelled pixels (255 ignored); right: (0,0) (0,2) (1,0) (1,1) -> pixel accuracy 4/5.
# class 0: TP 1, FP 0 (the 0 predicted at the 255 pixel does not count), FN 1 -> IoU 1/2
# class 1: TP 2, FP 1 (pixel (0,1)), FN 0                                    -> IoU 2/3
# class 2: TP 1, FP 0, FN 0                                                   -> IoU 1
# mIoU = (1/2 + 2/3 + 1) / 3 = 13/18
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
SEG_PRED = [[0, 1, 1], [1, 2, 0]]


def test_segmentation_by_hand() -> None:
    out = seg_logits(SEG_PRED, 3)
    assert pixel_accuracy(out, SEG_TARGET) == pytest.approx(4 / 5)
    assert miou(out, SEG_TARGET) == pytest.approx(13 / 18)
    assert confusion_matrix(out, SEG_TARGET).tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]


def test_segmentation_ignores_minus_one_and_absent_classes() -> None:
    # Same maps with -1 as the ignore label and a 4th class nobody predicts or labels:
    # its union is empty, so it has no IoU and mIoU stays 13/18.
    target = SEG_TARGET.clone()
    target[0, 1, 2] = -1
    out = seg_logits(SEG_PRED, 4)
    assert miou(out, target) == pytest.approx(13 / 18)
    assert pixel_accuracy(out, target) == pytest.approx(4 / 5)


def test_segmentation_pools_pixels_over_the_split() -> None:
    # Image 1 as above; image 2 is all class 2, predicted right (6 pixels).
    # Pixel accuracy (4 + 6) / (5 + 6) = 10/11, not the mean of 4/5 and 1.
    # Class 2 IoU becomes 7/7 = 1; classes 0 and 1 unchanged -> mIoU 13/18.
    target = torch.cat([SEG_TARGET, torch.full((1, 2, 3), 2)])
    out = torch.cat([seg_logits(SEG_PRED, 3), seg_logits([[2, 2, 2], [2, 2, 2]], 3)])
    assert pixel_accuracy(out, target) == pytest.approx(10 / 11)
    assert miou(out, target) == pytest.approx(13 / 18)


def test_segmentation_errors_and_empty() -> None:
    out = seg_logits(SEG_PRED, 3)
    assert math.isnan(pixel_accuracy(out, torch.full((1, 2, 3), 255)))
    with pytest.raises(TaskDataError, match=r"out of range \[0, 3\)"):
        miou(out, torch.tensor([[[0, 0, 1], [1, 3, 255]]]))
    with pytest.raises(TaskDataError, match=r"\(1, 3, 2, 3\) does not fit target shape"):
        miou(out, torch.zeros(1, 3, 2, dtype=torch.long))


# target depth  prediction
# 1   2   0     1.5 1 9
# 4  nan 0.5    5   3 1
# valid (finite, > 0): 1, 2, 4, 0.5
# |d̂ − d|     : 0.5, 1, 1, 0.5        -> mean 3/4
# |d̂ − d| / d : 0.5, 0.5, 0.25, 1     -> mean 2.25/4 = 9/16
DEPTH_TARGET = torch.tensor([[[1.0, 2.0, 0.0], [4.0, NAN, 0.5]]])
DEPTH_PRED = torch.tensor([[[[1.5, 1.0, 9.0], [5.0, 3.0, 1.0]]]])


def test_depth_by_hand() -> None:
    assert depth_abs_err(DEPTH_PRED, DEPTH_TARGET) == pytest.approx(3 / 4)
    assert depth_rel_err(DEPTH_PRED, DEPTH_TARGET) == pytest.approx(9 / 16)
    # A target with the channel dim kept gives the same values.
    assert depth_abs_err(DEPTH_PRED, DEPTH_TARGET.unsqueeze(1)) == pytest.approx(3 / 4)
    assert math.isnan(depth_abs_err(DEPTH_PRED, torch.zeros(1, 2, 3)))
    with pytest.raises(TaskDataError, match="depth"):
        depth_abs_err(DEPTH_PRED, torch.ones(1, 3, 2))


def normals_case() -> tuple[Tensor, Tensor]:
    """2×3 maps: 5 valid pixels with errors 0°, 10°, 20°, 45°, 90°, and one zero target.

    Predictions are (sin θ, 0, cos θ) scaled by 2 and targets (0, 0, 1) (one of them scaled
    by 3): both are normalised, so only the angle θ counts.
    """
    angles = torch.tensor([[0.0, 10.0, 20.0], [45.0, 90.0, 30.0]])
    theta = torch.deg2rad(angles)
    pred = 2 * torch.stack([theta.sin(), torch.zeros_like(theta), theta.cos()])
    target = torch.zeros(3, 2, 3)
    target[2] = 1.0
    target[2, 0, 1] = 3.0
    target[:, 1, 2] = 0.0  # no normal here: the 30° pixel is not counted
    return pred.unsqueeze(0), target.unsqueeze(0)


def test_normals_by_hand() -> None:
    pred, target = normals_case()
    assert sorted(normal_angles(pred, target).tolist()) == pytest.approx([0, 10, 20, 45, 90])
    assert normal_mean_angle(pred, target) == pytest.approx(33.0)  # 165 / 5
    assert normal_median_angle(pred, target) == pytest.approx(20.0)
    assert normal_within_11_25(pred, target) == pytest.approx(2 / 5)  # 0°, 10°
    assert normal_within_22_5(pred, target) == pytest.approx(3 / 5)  # + 20°
    assert normal_within_30(pred, target) == pytest.approx(3 / 5)  # 30° pixel is invalid


def test_normals_even_median_and_nan_targets() -> None:
    pred, target = normals_case()
    target[0, :, 1, 1] = NAN  # drop the 90° pixel: errors 0, 10, 20, 45 -> median 15
    assert normal_median_angle(pred, target) == pytest.approx(15.0)
    assert normal_mean_angle(pred, target) == pytest.approx(75 / 4)
    with pytest.raises(TaskDataError, match=r"\(N, 3, H, W\)"):
        normal_mean_angle(pred[:, :2], target[:, :2])


def test_directions_are_registered() -> None:
    expected = {
        "miou": "max",
        "pixel_accuracy": "max",
        "depth_abs_err": "min",
        "depth_rel_err": "min",
        "normal_mean_angle": "min",
        "normal_median_angle": "min",
        "normal_within_11_25": "max",
        "normal_within_22_5": "max",
        "normal_within_30": "max",
    }
    assert {name: METRICS.lookup(name).direction for name in expected} == expected
