"""COCO mAP: closed-form hand-made cases, the tensor metrics, and pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from mtlkit.errors import TaskDataError
from mtlkit.tasks import METRICS
from mtlkit.tasks.detection import (
    ImageDetections,
    ImageTruth,
    evaluate_detections,
    evaluate_output,
    pairwise_iou,
)
from tests.tasks._detection import perfect_output


def det(boxes, scores, classes) -> ImageDetections:
    return ImageDetections(
        np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes, int)
    )


def gt(boxes, classes, crowd=()) -> ImageTruth:
    return ImageTruth(
        np.array(boxes, float).reshape(-1, 4), np.array(classes, int), np.array(crowd, bool)
    )


BOX = [10.0, 10.0, 30.0, 30.0]  # 20 × 20


def test_perfect_detections_score_one() -> None:
    truths = [gt([BOX, [40, 40, 50, 60]], [0, 1]), gt([[0, 0, 5, 5]], [0])]
    dets = [det([BOX, [40, 40, 50, 60]], [0.9, 0.8], [0, 1]), det([[0, 0, 5, 5]], [0.7], [0])]
    result = evaluate_detections(dets, truths)
    assert result["map"] == pytest.approx(1.0)
    assert result["map50"] == pytest.approx(1.0)


def test_iou_072_counts_at_five_of_ten_thresholds() -> None:
    # shift a 20 × 20 box by 3 px along x: IoU = 17·20 / (2·400 − 340) = 340 / 460 ≈ 0.739
    shifted = [13.0, 10.0, 33.0, 30.0]
    iou = pairwise_iou(np.array([shifted]), np.array([BOX]), np.array([False]))[0, 0]
    assert iou == pytest.approx(340 / 460)
    result = evaluate_detections([det([shifted], [0.9], [0])], [gt([BOX], [0])])
    # thresholds .50 .55 .60 .65 .70 are ≤ 0.739: AP 1 there, 0 at the five others
    assert result["map"] == pytest.approx(0.5)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == pytest.approx(0.0)


def test_false_positive_ranked_first_halves_ap() -> None:
    dets = det([[60, 60, 70, 70], BOX], [0.9, 0.5], [0, 0])
    result = evaluate_detections([dets], [gt([BOX], [0])])
    # precision 1/2 at recall 1, and the envelope carries 1/2 to every recall point
    assert result["map"] == pytest.approx(0.5)


def test_false_positive_ranked_last_costs_nothing() -> None:
    dets = det([BOX, [60, 60, 70, 70]], [0.9, 0.5], [0, 0])
    assert evaluate_detections([dets], [gt([BOX], [0])])["map"] == pytest.approx(1.0)


def test_missed_object_caps_recall_at_half() -> None:
    result = evaluate_detections([det([BOX], [0.9], [0])], [gt([BOX, [50, 50, 60, 60]], [0, 0])])
    # precision 1 at the 51 recall points 0, .01, ..., .5 and 0 at the 50 above
    assert result["map"] == pytest.approx(51 / 101)


def test_duplicate_detection_is_a_false_positive() -> None:
    dets = det([BOX, BOX, [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0])
    result = evaluate_detections([dets], [gt([BOX, [50, 50, 60, 60]], [0, 0])])
    # ranks: TP (P=1, R=.5), FP, TP (P=2/3, R=1): AP = (51 · 1 + 50 · 2/3) / 101
    assert result["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_class_without_ground_truth_is_left_out_and_wrong_class_misses() -> None:
    dets = det([BOX, [0, 0, 4, 4]], [0.9, 0.95], [0, 2])
    result = evaluate_detections([dets], [gt([BOX], [0])])
    assert result["map"] == pytest.approx(1.0)
    assert set(result["per_class"]) == {0}
    result = evaluate_detections([det([BOX], [0.9], [1])], [gt([BOX], [0])])
    assert result["map"] == pytest.approx(0.0)


def test_crowd_region_absorbs_detections_without_counting() -> None:
    crowd_box = [40, 40, 80, 80]
    dets = det([BOX, [42, 42, 50, 50], [60, 60, 70, 70]], [0.5, 0.9, 0.8], [0, 0, 0])
    truth = gt([crowd_box, BOX], [0, 0], [True, False])
    # both detections inside the crowd box are ignored (IoU = inter / det area = 1)
    assert evaluate_detections([dets], [truth])["map"] == pytest.approx(1.0)


def test_no_ground_truth_gives_nan() -> None:
    result = evaluate_detections([det([BOX], [0.9], [0])], [gt(np.zeros((0, 4)), [])])
    assert math.isnan(result["map"])


def test_max_detections_truncates_per_image_and_class() -> None:
    boxes = [[100 + i, 0, 110 + i, 10] for i in range(5)] + [BOX]
    scores = [0.9] * 5 + [0.1]
    dets = det(boxes, scores, [0] * 6)
    assert evaluate_detections([dets], [gt([BOX], [0])], max_detections=5)["map"] == 0.0
    assert evaluate_detections([dets], [gt([BOX], [0])], max_detections=6)["map"] > 0.0


def test_registered_metrics_decode_outputs() -> None:
    target = torch.tensor(
        [
            [[2.0, 3.0, 14.0, 17.0, 1.0], [0, 0, 0, 0, -1]],
            [[20.0, 4.0, 30.0, 12.0, 0.0], [5.0, 18.0, 13.0, 30.0, 2.0]],
        ]
    )
    out = perfect_output(target, k=3)
    assert METRICS.lookup("map")(out, target) == pytest.approx(1.0)
    assert METRICS.lookup("map50")(out, target) == pytest.approx(1.0)
    assert METRICS.lookup("map").higher_is_better
    # an output that misses the second image's boxes
    out[1, :3] = -10.0
    assert evaluate_output(out, target)["map"] == pytest.approx(1 / 3)


def test_metric_rejects_bad_layout() -> None:
    with pytest.raises(TaskDataError, match="negative size"):
        evaluate_output(torch.zeros(1, 10, 2, 2), torch.tensor([[[5.0, 5.0, 1.0, 9.0, 0.0]]]))
    with pytest.raises(TaskDataError, match=r"\(B, M, 5\)"):
        evaluate_output(torch.zeros(1, 10, 2, 2), torch.zeros(1, 3, 4))


def random_case(seed: int, n_images: int = 12, k: int = 3):
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (g, 2))
        wh = rng.uniform(4, 30, (g, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        gc = rng.integers(0, k, g)
        crowd = rng.random(g) < 0.15
        d_boxes, d_cls = [], []
        for b, c in zip(gb, gc, strict=True):  # noisy copies, sometimes twice, some misses
            for _ in range(int(rng.integers(0, 3))):
                d_boxes.append(b + rng.normal(0, 3, 4))
                d_cls.append(c if rng.random() > 0.1 else (c + 1) % k)
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            p = rng.uniform(0, 80, 2)
            d_boxes.append(np.concatenate([p, p + rng.uniform(4, 30, 2)]))
            d_cls.append(int(rng.integers(0, k)))
        d_boxes_arr = np.array(d_boxes, float).reshape(-1, 4)
        d_boxes_arr[:, 2:] = np.maximum(d_boxes_arr[:, 2:], d_boxes_arr[:, :2] + 0.5)
        truths.append(gt(gb, gc, crowd))
        dets.append(det(d_boxes_arr, rng.random(len(d_cls)), d_cls))
    return dets, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools(seed: int, tmp_path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets, truths = random_case(seed)
    k = 3
    images, anns, results = [], [], []
    for i, (d, t) in enumerate(zip(dets, truths, strict=True), start=1):
        images.append({"id": i, "width": 120, "height": 120, "file_name": f"{i}.png"})
        for b, c, crowd in zip(t.boxes, t.classes, t.crowd, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "score": float(s),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                }
            )
    path = tmp_path / "gt.json"
    categories = [{"id": c + 1, "name": str(c)} for c in range(k)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = evaluate_detections(dets, truths)
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert ours["map50"] == pytest.approx(evaluator.stats[1], abs=1e-9)
    assert ours["map75"] == pytest.approx(evaluator.stats[2], abs=1e-9)
