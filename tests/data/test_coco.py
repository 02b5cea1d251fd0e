"""COCO reader and writer: RLE and polygons, round trips through shapes scenes, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data import DATASETS
from mtlkit.data.coco import (
    CocoFormatError,
    coco_shapes,
    coco_split,
    encode_mask,
    polygons_to_mask,
    read_coco,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
    write_coco,
)
from mtlkit.data.shapes import CATEGORIES, make_scene
from mtlkit.errors import DatasetError, TaskDataError


def random_masks(seed: int = 0, n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = [
        rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < p
        for p in rng.uniform(0.05, 0.95, n)
    ]
    return [*masks, np.ones((7, 5), bool), np.zeros((3, 9), bool)]


# --------------------------------------------------------------------------- RLE, polygons


def test_rle_counts_closed_form() -> None:
    mask = np.array([[0, 1], [0, 1], [1, 1]], bool)  # column-major: 0 0 1 | 1 1 1
    assert rle_encode(mask) == [2, 4]
    assert rle_encode(np.ones((2, 2), bool)) == [0, 4]
    assert rle_decode([2, 4], 3, 2).tolist() == mask.tolist()


@pytest.mark.parametrize("mask", random_masks(), ids=lambda m: f"{m.shape}")
def test_rle_round_trips(mask: np.ndarray) -> None:
    counts = rle_encode(mask)
    assert sum(counts) == mask.size
    assert np.array_equal(rle_decode(counts, *mask.shape), mask)
    assert rle_from_string(rle_to_string(counts)) == counts


def test_rle_string_handles_large_and_negative_differences() -> None:
    counts = [0, 100000, 3, 1, 70000, 2, 5]  # differences to two before are negative too
    assert rle_from_string(rle_to_string(counts)) == counts


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rle_agrees_with_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    for mask in random_masks(1):
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = encode_mask(mask)
        assert ours["counts"] == theirs["counts"].decode()
        assert ours["size"] == list(theirs["size"])
        decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)


def test_polygon_rasterisation() -> None:
    square = polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[1:4, 2:6] = True
    assert np.array_equal(square, expected)
    # a union of two polygons; a right triangle covers about half its box
    two = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 7, 5, 7, 7]], 8, 8)
    assert two[:2, :2].all() and two.sum() == 4 + 3
    tri = polygons_to_mask([[0, 0, 40, 0, 0, 40]], 40, 40)
    assert abs(tri.sum() - 800) <= 40


# --------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def scenes() -> list:
    rng = np.random.default_rng(3)
    return [make_scene(rng, 32, 40, 4) for _ in range(5)]


@pytest.mark.parametrize("image_format", ["npy", "png"])
def test_write_then_read_restores_the_scenes(scenes, tmp_path: Path, image_format: str) -> None:
    path = write_coco(scenes, tmp_path, "train", CATEGORIES, image_format)
    data = read_coco(path, tmp_path / "images" / "train")
    assert data.categories == dict(enumerate(CATEGORIES, start=1))
    split = coco_split(data)
    assert split.inputs.shape == (5, 3, 32, 40)
    tol = 0 if image_format == "npy" else 1 / 255 + 1e-6  # PNG: 8 bits
    for i, scene in enumerate(scenes):
        assert np.abs(split.inputs[i].numpy() - scene.image).max() <= tol
        assert np.array_equal(split.targets["segmentation"][i].numpy(), scene.semantic)
        rows = split.targets["detection"][i]
        rows = rows[rows[:, 4] >= 0]
        expected = [
            [x, y, x + w, y + h, o.category - 1] for o in scene.objects for (x, y, w, h) in [o.box]
        ]
        assert rows.tolist() == expected
        present = {o.category - 1 for o in scene.objects}
        assert split.targets["labels"][i].tolist() == [float(c in present) for c in range(3)]
    # the masks survive through RLE
    first = data.images[0]
    for ann, obj in zip(first.annotations, scenes[0].objects, strict=True):
        assert np.array_equal(data.mask(first, ann), obj.mask)


def test_resizing_scales_boxes_and_masks(scenes, tmp_path: Path) -> None:
    path = write_coco(scenes[:2], tmp_path, "train", CATEGORIES, "npy")
    split = coco_split(read_coco(path, tmp_path / "images" / "train"), image_size=(64, 80))
    full = coco_split(read_coco(path, tmp_path / "images" / "train"))
    assert split.inputs.shape == (2, 3, 64, 80)
    real = full.targets["detection"][..., 4] >= 0
    scaled = split.targets["detection"][real][:, :4]
    assert torch.allclose(scaled, full.targets["detection"][real][:, :4] * 2)
    assert torch.equal(split.targets["segmentation"][:, ::2, ::2], full.targets["segmentation"])


def test_crowd_and_polygon_annotations(tmp_path: Path) -> None:
    image = np.zeros((10, 12, 3), np.float32)
    np.save(tmp_path / "a.npy", image)
    crowd = np.zeros((10, 12), bool)
    crowd[6:9, 0:4] = True
    data = {
        "images": [{"id": 5, "file_name": "a.npy", "width": 12, "height": 10}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 9,
                "bbox": [2, 1, 4, 3],
                "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 5,
                "category_id": 3,
                "bbox": [0, 6, 4, 3],
                "segmentation": encode_mask(crowd, compressed=False),
                "iscrowd": 1,
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    split = coco_split(read_coco(tmp_path / "ann.json"))
    sem = split.targets["segmentation"][0]
    assert int((sem == 2).sum()) == 12 and int((sem == 1).sum()) == 12  # dog = 2, cat = 1
    assert split.targets["detection"][0].tolist() == [[2.0, 1.0, 6.0, 4.0, 1.0]]  # no crowd
    assert split.targets["labels"][0].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- bad input


def write_file(tmp_path: Path, **changes) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "a.npy", "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 3, 3],
                "segmentation": [[1, 1, 4, 1, 4, 4]],
                "iscrowd": 0,
            }
        ],
    }
    data["annotations"][0].update(changes)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 42}, "annotation id 7 refers to image_id 42, which is not in 'images'"),
        ({"category_id": 5}, "annotation id 7 refers to category_id 5, which is not in"),
        ({"bbox": [1, 1, -2, 3]}, r"annotation id 7: bbox \[1, 1, -2, 3\] has a negative"),
        ({"segmentation": [[1, 1, 4, 1]]}, "polygon 0 has 2 point\\(s\\); a polygon needs at"),
        ({"segmentation": [[1, 1, 4, 1, 4]]}, "polygon 0 is not a flat list of x, y pairs"),
        ({"bbox": [1, 2]}, r"bbox must be \[x, y, width, height\]"),
    ],
)
def test_bad_records_name_file_and_record(tmp_path: Path, change: dict, message: str) -> None:
    path = write_file(tmp_path, **change)
    with pytest.raises(CocoFormatError, match=message) as info:
        read_coco(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, TaskDataError) and isinstance(info.value, DatasetError)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="does not exist"):
        read_coco(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        read_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"images": []}))
    with pytest.raises(CocoFormatError, match="missing field\\(s\\) annotations, categories"):
        read_coco(tmp_path / "y.json")
    path = write_file(tmp_path)  # a.npy is missing
    with pytest.raises(CocoFormatError, match=r"a\.npy does not exist"):
        coco_split(read_coco(path))
    np.save(tmp_path / "a.npy", np.zeros((8, 9, 3), np.float32))
    with pytest.raises(CocoFormatError, match=r"image id 1 \(a\.npy\) is 8 × 9 pixels"):
        coco_split(read_coco(path))
    rle = {"size": [4, 4], "counts": [3, 2]}
    np.save(tmp_path / "a.npy", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(CocoFormatError, match="annotation id 7: RLE size"):
        coco_split(read_coco(write_file(tmp_path, segmentation=rle)))


# --------------------------------------------------------------------------- datasets


def test_coco_shapes_dataset(tmp_path: Path) -> None:
    assert "coco" in DATASETS and "coco_shapes" in DATASETS
    root = tmp_path / "shapes"
    bundle = coco_shapes(str(root), n_train=6, n_val=3, n_test=3, image_size=32)
    assert (root / "annotations" / "instances_val.json").is_file()
    assert [t.name for t in bundle.tasks] == ["labels", "detection", "segmentation"]
    assert [t.kind for t in bundle.tasks] == ["multilabel", "detection", "segmentation"]
    assert len(bundle.train) == 6 and bundle.train.inputs.shape[1:] == (3, 32, 32)
    assert bundle.info["categories"] == list(CATEGORIES)
    again = coco_shapes(str(root), n_train=6, n_val=3, n_test=3, image_size=32)  # reused
    assert torch.equal(again.test.inputs, bundle.test.inputs)
    with pytest.raises(DatasetError, match="holds scenes made with"):
        coco_shapes(str(root), n_train=7, n_val=3, n_test=3, image_size=32)
    with pytest.raises(DatasetError, match="must be ≥ 1"):
        coco_shapes(str(tmp_path / "other"), n_train=0)
    with pytest.raises(CocoFormatError, match=r"instances_train\.json does not exist"):
        DATASETS.build("coco", root=str(tmp_path / "empty"))
