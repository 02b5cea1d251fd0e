"""FCOS head, targets, losses, decoding and NMS: closed forms, properties, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn import build_model
from mtlkit.nn.detection import FCOSHead
from mtlkit.nn.heads import HEADS
from mtlkit.nn.resnet import ResNetEncoder
from mtlkit.tasks import LOSSES, Task
from mtlkit.tasks.boxes import (
    EXTRA_CHANNELS,
    batched_nms,
    box_iou,
    decode,
    nms,
    nms_torch,
    pad_boxes,
    split_output,
)
from mtlkit.tasks.fcos import FCOSLoss, centerness_target, encode_targets, iou_loss
from tests.tasks._detection import perfect_output


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 20 + 1
    return torch.cat([xy, xy + wh], 1)


# --------------------------------------------------------------------------- boxes and NMS


def test_box_iou_closed_form() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))


def test_nms_hand_case() -> None:
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11], [21, 20, 31, 30]]
    )
    scores = torch.tensor([0.9, 0.95, 0.5, 0.3, 0.6])
    # 1 beats 0 and 3 (IoU ≈ .82, .74); 4 beats 2 (IoU ≈ .82)
    assert nms_torch(boxes, scores, 0.5).tolist() == [1, 4]
    # at a high threshold nothing overlaps enough: all kept, by decreasing score
    assert nms_torch(boxes, scores, 0.9).tolist() == [1, 0, 4, 2, 3]
    assert nms_torch(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_properties(seed: int) -> None:
    boxes = random_boxes(60, seed)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(seed + 10))
    keep = nms_torch(boxes, scores, 0.4)
    kept = set(keep.tolist())
    iou = box_iou(boxes, boxes)
    # kept boxes do not overlap each other above the threshold, and come by decreasing score
    sub = iou[keep][:, keep] - torch.eye(len(keep))
    assert bool((sub <= 0.4).all())
    assert bool((scores[keep][1:] <= scores[keep][:-1]).all())
    # every dropped box overlaps a kept box of higher score above the threshold
    for i in set(range(60)) - kept:
        assert any(iou[i, j] > 0.4 and scores[j] > scores[i] for j in kept)


def test_nms_matches_torchvision() -> None:
    ops = pytest.importorskip("torchvision.ops")
    for seed in range(3):
        boxes = random_boxes(80, seed)
        scores = torch.rand(80, generator=torch.Generator().manual_seed(seed))
        assert nms_torch(boxes, scores, 0.5).tolist() == ops.nms(boxes, scores, 0.5).tolist()
        classes = torch.randint(0, 3, (80,), generator=torch.Generator().manual_seed(seed))
        assert (
            batched_nms(boxes, scores, classes, 0.5).tolist()
            == ops.batched_nms(boxes, scores, classes, 0.5).tolist()
        )


def test_batched_nms_keeps_other_classes() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]


# --------------------------------------------------------------------------- targets


def test_encode_targets_smallest_box_wins_and_distances() -> None:
    locations = torch.tensor([[6.0, 6.0], [2.0, 2.0], [30.0, 30.0], [10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 4.0, 12.0, 12.0]])
    labels, dist = encode_targets(locations, boxes, torch.tensor([0, 2]))
    assert labels.tolist() == [2, 0, -1, 2]
    assert dist[0].tolist() == [2.0, 2.0, 6.0, 6.0]  # to the small box
    assert dist[1].tolist() == [2.0, 2.0, 18.0, 18.0]
    assert dist[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    # a location on the border is not inside (FCOS: all distances > 0)
    labels, _ = encode_targets(torch.tensor([[4.0, 8.0]]), boxes[1:], torch.tensor([1]))
    assert labels.tolist() == [-1]


def test_centerness_target() -> None:
    d = torch.tensor([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 4.0, 2.0], [1.0, 1.0, 9.0, 3.0]])
    assert torch.allclose(centerness_target(d), torch.tensor([1.0, 0.5, math.sqrt(1 / 27)]))


def test_iou_loss_closed_form() -> None:
    t = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert float(iou_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(iou_loss(t, t, "giou")) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # a 2 × 2 box inside the 4 × 4 one, same centre
    assert float(iou_loss(p, t)) == pytest.approx(-math.log(5 / 17))
    # GIoU: the hull is the 4 × 4 box = the union, so 1 − GIoU = 1 − IoU
    assert float(iou_loss(p, t, "giou")) == pytest.approx(1 - 5 / 17, abs=1e-6)


# --------------------------------------------------------------------------- head


def test_head_layout_and_prior() -> None:
    head = HEADS.build("fcos", 8, 3, stride=4, channels=16, num_convs=1)
    out = head(torch.randn(2, 8, 5, 6))
    assert out.shape == (2, 3 + EXTRA_CHANNELS, 5, 6)
    parts = split_output(out)
    assert parts.locations[0, 0].tolist() == [2.0, 2.0]
    assert parts.locations[0, 7].tolist() == [6.0, 6.0]  # row 1, column 1
    assert bool((parts.distances > 0).all())
    # the class bias starts at the prior 0.01 (weights ~ N(0, 0.01²))
    assert torch.sigmoid(parts.logits).mean().item() == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ConfigError, match="option 'stride'"):
        FCOSHead(8, 3, stride=0)
    with pytest.raises(TaskDataError, match="pool: false"):
        head(torch.randn(2, 8))


def test_decode_recovers_boxes() -> None:
    target = torch.tensor([[[2.0, 3.0, 14.0, 17.0, 1.0], [18.0, 18.0, 30.0, 28.0, 0.0]]])
    dets = decode(perfect_output(target, k=2))[0]
    assert dets.classes.tolist() == [1, 0] or dets.classes.tolist() == [0, 1]
    order = torch.argsort(dets.classes, descending=True)
    assert torch.allclose(dets.boxes[order], target[0, :, :4], atol=1e-5)
    assert bool((dets.scores > 0.99).all())


# --------------------------------------------------------------------------- loss


def test_loss_prefers_the_right_output_and_has_gradients() -> None:
    target = torch.tensor([[[2.0, 3.0, 14.0, 17.0, 1.0], [0, 0, 0, 0, -1]]])
    loss = LOSSES.lookup("fcos")
    good = perfect_output(target, k=2)
    # make every location inside the box predict it well
    labels, dist = FCOSLoss().targets(good, target)
    k = 2
    flat = good.flatten(2).transpose(1, 2).clone()
    pos = labels[0] >= 0
    flat[0, pos, k : k + 4] = dist[0, pos]
    flat[0, pos, 1] = 10.0
    flat[0, pos, k + 4] = torch.logit(centerness_target(dist[0, pos]).clamp(1e-4, 1 - 1e-4))
    good = flat.transpose(1, 2).reshape(good.shape)
    bad = good.clone()
    bad[:, :k] = 0.0
    parts = FCOSLoss().components(good, target)
    assert float(parts["box"]) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(good, target)) < float(loss(bad, target))
    head = FCOSHead(4, 2, stride=4, channels=8, num_convs=1)
    feats = torch.randn(1, 4, 8, 8, requires_grad=True)
    value = loss(head(feats), target)
    value.backward()
    assert torch.isfinite(value) and feats.grad is not None and feats.grad.abs().sum() > 0


def test_loss_without_objects_is_only_the_focal_term() -> None:
    head = FCOSHead(4, 2, stride=4, channels=8, num_convs=1)
    target = pad_boxes([torch.zeros(0, 4)], [torch.zeros(0)], 3)
    parts = FCOSLoss().components(head(torch.randn(1, 4, 4, 4)), target)
    assert float(parts["box"].detach()) == 0.0 and float(parts["centerness"].detach()) == 0.0
    assert float(parts["cls"].detach()) > 0


def test_loss_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'box_loss'"):
        FCOSLoss(box_loss="l1")
    with pytest.raises(ConfigError, match="'gamma'"):
        FCOSLoss(gamma=-1)


# --------------------------------------------------------------------------- task and model


def test_detection_task_checks_target_layout() -> None:
    task = Task("det", "detection", 3, head="fcos", head_params={"stride": 4})
    out = torch.zeros(2, 3 + EXTRA_CHANNELS, 4, 4)
    good = pad_boxes(
        [torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.zeros(0, 4)],
        [torch.tensor([2]), torch.zeros(0)],
        2,
    )
    task.check(out, good)
    with pytest.raises(TaskDataError, match=r"task 'det'.*expected output \(2, 10, h, w\)"):
        task.check(torch.zeros(2, 9, 4, 4), good)
    bad = good.clone()
    bad[0, 0, 4] = 3.0
    with pytest.raises(TaskDataError, match=r"class 3 is not an integer in \[0, 3\)"):
        task.check(out, bad)
    bad = good.clone()
    bad[0, 0, 2] = 0.0
    with pytest.raises(TaskDataError, match="negative size"):
        task.check(out, bad)
    with pytest.raises(TaskDataError, match=r"\(B, M, 5\)"):
        task.check(out, torch.zeros(2, 2, 4))
    with pytest.raises(TaskDataError, match="floating point"):
        task.check(out, good.long())


def test_three_heads_share_one_backbone_and_train() -> None:
    tasks = [
        Task("labels", "multilabel", 2, head="pooled"),
        Task(
            "det",
            "detection",
            2,
            head="fcos",
            head_params={"stride": 2, "channels": 8, "num_convs": 1},
        ),
        Task(
            "seg", "segmentation", 3, head="dense", head_params={"scale_factor": 2.0, "hidden": [8]}
        ),
    ]
    model = build_model("hps", ResNetEncoder(3, widths=(8, 8), blocks=1, pool=False), tasks)
    x = torch.rand(2, 3, 16, 16)
    target = {
        "labels": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        "det": pad_boxes(
            [
                torch.tensor([[2.0, 2.0, 9.0, 9.0]]),
                torch.tensor([[1.0, 1.0, 7.0, 6.0], [8.0, 8.0, 15.0, 15.0]]),
            ],
            [torch.tensor([0]), torch.tensor([0, 1])],
            2,
        ),
        "seg": torch.randint(0, 3, (2, 16, 16)),
    }
    out = model(x)
    assert out["labels"].shape == (2, 2) and out["seg"].shape == (2, 3, 16, 16)
    assert out["det"].shape == (2, 2 + EXTRA_CHANNELS, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        losses = {t.name: t.compute_loss(model(x)[t.name], target[t.name]) for t in tasks}
        total = sum(losses.values())
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < 0.7 * first
    # every task's loss reaches the shared encoder
    losses = {t.name: t.compute_loss(model(x)[t.name], target[t.name]) for t in tasks}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, model.shared_parameters(), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
