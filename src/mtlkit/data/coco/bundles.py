"""The ``coco`` and ``coco_shapes`` datasets: a COCO folder as tensors and three tasks.

Every image becomes three targets, one per task of the dataset:

- ``labels`` (multi-label, ``(N, K)`` floats in {0, 1}): which categories appear;
- ``detection`` (``(N, M, 5)`` rows ``(x1, y1, x2, y2, class)`` padded with class −1, see
  :mod:`mtlkit.tasks.boxes`): the non-crowd boxes (crowd regions are not detection targets,
  as in the usual COCO training recipes);
- ``segmentation`` (``(N, H, W)`` int64, 0 = background, k = the k-th category in id order):
  the union of the masks, larger objects first so smaller ones stay on top.

Classes are the categories sorted by id, numbered from 0 (detection, labels) or from 1
(segmentation). Images must share one size unless ``image_size`` is given, which resizes
images (bilinear), masks (nearest) and boxes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.data.coco.io import CocoDataset, CocoFormatError, read_coco, read_image, write_coco
from mtlkit.errors import DatasetError
from mtlkit.files import read_text
from mtlkit.tasks import Task

__all__ = ["coco", "coco_shapes", "coco_split", "vision_tasks", "write_shapes"]

SPLITS = ("train", "val", "test")


def coco_split(
    dataset: CocoDataset,
    name: str = "split",
    image_size: Sequence[int] | None = None,
    max_boxes: int | None = None,
) -> TensorSplit:
    """Images and the three targets (``labels``, ``detection``, ``segmentation``) of a
    COCO dataset as one :class:`TensorSplit` (see the module docstring)."""
    if not dataset.images:
        raise CocoFormatError(f"{dataset.path}: the file has no images")
    index = dataset.class_index
    k = len(index)
    sizes = {(img.height, img.width) for img in dataset.images}
    if image_size is None and len(sizes) > 1:
        raise CocoFormatError(
            f"{dataset.path}: images have different sizes {sorted(sizes)[:3]}...; "
            "give image_size to resize them"
        )
    out_h, out_w = (int(image_size[0]), int(image_size[1])) if image_size else sizes.pop()
    n_boxes = max([sum(not a.iscrowd for a in img.annotations) for img in dataset.images] + [1])
    if max_boxes is not None and n_boxes > max_boxes:
        raise CocoFormatError(
            f"{dataset.path}: an image has {n_boxes} boxes, more than max_boxes = {max_boxes}"
        )
    m = max_boxes or n_boxes
    images = torch.zeros(len(dataset.images), 3, out_h, out_w)
    labels = torch.zeros(len(dataset.images), k)
    boxes = torch.zeros(len(dataset.images), m, 5)
    boxes[..., 4] = -1
    semantic = torch.zeros(len(dataset.images), out_h, out_w, dtype=torch.long)
    for i, img in enumerate(dataset.images):
        pixels = read_image(dataset.image_dir / img.file_name)
        if pixels.shape[1:] != (img.height, img.width):
            raise CocoFormatError(
                f"{dataset.path}: image id {img.id} ({img.file_name}) is "
                f"{pixels.shape[1]} × {pixels.shape[2]} pixels, but its record says "
                f"{img.height} × {img.width}"
            )
        sem = np.zeros((img.height, img.width), dtype=np.int64)
        for ann in sorted(img.annotations, key=lambda a: -a.box[2] * a.box[3]):
            sem[dataset.mask(img, ann)] = index[ann.category] + 1
            labels[i, index[ann.category]] = 1.0
        sy, sx = out_h / img.height, out_w / img.width
        row = 0
        for ann in img.annotations:
            if ann.iscrowd:
                continue
            x, y, w, h = ann.box
            boxes[i, row] = torch.tensor(
                [x * sx, y * sy, (x + w) * sx, (y + h) * sy, index[ann.category]]
            )
            row += 1
        image_t, sem_t = torch.from_numpy(pixels), torch.from_numpy(sem)
        if (out_h, out_w) != (img.height, img.width):
            image_t = F.interpolate(
                image_t[None], (out_h, out_w), mode="bilinear", align_corners=False
            )[0]
            sem_t = F.interpolate(sem_t[None, None].float(), (out_h, out_w), mode="nearest")
            sem_t = sem_t[0, 0].long()
        images[i], semantic[i] = image_t, sem_t
    targets = {"labels": labels, "detection": boxes, "segmentation": semantic}
    return TensorSplit(images, targets, name)


def write_shapes(
    root: str | Path,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 4,
    image_format: str = "png",
) -> Path:
    """Render procedural shapes scenes (:mod:`mtlkit.data.shapes`) into a COCO folder with
    train, val and test splits; returns ``root``."""
    from mtlkit.data.shapes import CATEGORIES, make_scene

    rng = np.random.default_rng(seed)
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        scenes = [make_scene(rng, image_size, image_size, max_objects) for _ in range(n)]
        write_coco(scenes, root, split, CATEGORIES, image_format)
    return Path(root)


# --------------------------------------------------------------------------- datasets


def vision_tasks(num_classes: int, stride: int, channels: int = 32) -> list[Task]:
    """The three tasks of a COCO dataset on a feature map of stride ``stride``."""
    return [
        Task(
            "labels",
            "multilabel",
            num_classes,
            head="pooled",
            metrics=["macro_f1_multilabel", "multilabel_map"],
        ),
        Task(
            "detection",
            "detection",
            num_classes,
            head="fcos",
            head_params={"stride": stride, "channels": channels, "num_convs": 2},
        ),
        Task(
            "segmentation",
            "segmentation",
            num_classes + 1,
            head="dense",
            head_params={"scale_factor": float(stride), "hidden": [channels]},
        ),
    ]


#: the bundles' encoder: a small ResNet whose feature map has stride 2 · 2 = 4
ENCODER: dict[str, Any] = {
    "in_channels": 3,
    "widths": [16, 32],
    "blocks": 1,
    "stem_stride": 2,
    "pool": False,
}


def _bundle(name: str, splits: dict[str, TensorSplit], k: int, info: dict[str, Any]) -> DataBundle:
    encoder = dict(ENCODER)
    stride = encoder["stem_stride"] * 2 ** (len(encoder["widths"]) - 1)
    return DataBundle(
        name,
        splits["train"],
        splits["val"],
        splits["test"],
        vision_tasks(k, stride),
        ("resnet", encoder),
        info,
    )


@DATASETS.register("coco")
def coco(
    root: str,
    annotations: str = "annotations/instances_{split}.json",
    images: str = "images/{split}",
    image_size: tuple[int, int] | None = None,
    max_boxes: int | None = None,
) -> DataBundle:
    """A COCO-format folder with train, val and test splits: ``root/annotations`` and
    ``root/images`` by default (``{split}`` in the patterns is replaced by the split name)."""
    folder = Path(root).expanduser()
    splits: dict[str, TensorSplit] = {}
    categories: dict[int, str] | None = None
    for split in SPLITS:
        data = read_coco(
            folder / annotations.format(split=split), folder / images.format(split=split)
        )
        if categories is not None and data.categories != categories:
            raise CocoFormatError(f"{data.path}: its categories differ from the train split's")
        categories = data.categories
        splits[split] = coco_split(data, split, image_size, max_boxes)
    assert categories is not None
    names = [categories[c] for c in sorted(categories)]
    return _bundle("coco", splits, len(names), {"root": str(folder), "categories": names})


@DATASETS.register("coco_shapes")
def coco_shapes(
    root: str = "~/.cache/mtlkit/coco_shapes",
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 4,
) -> DataBundle:
    """Procedural shapes scenes written as a COCO folder under ``root`` (generated once; a
    ``meta.json`` records the options, and a folder made with other options is an error)."""
    folder = Path(root).expanduser()
    meta = {
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "seed": seed,
        "image_size": image_size,
        "max_objects": max_objects,
    }
    if min(n_train, n_val, n_test) < 1:
        raise DatasetError(
            f"dataset 'coco_shapes': n_train, n_val and n_test must be ≥ 1, "
            f"got {n_train}, {n_val}, {n_test}"
        )
    marker = folder / "meta.json"
    if marker.is_file():
        found = json.loads(read_text(marker, "scene marker", DatasetError))
        if found != meta:
            raise DatasetError(
                f"dataset 'coco_shapes': {folder} holds scenes made with {found}, not {meta}; "
                "choose another root or delete the folder"
            )
    else:
        write_shapes(folder, n_train, n_val, n_test, seed, image_size, max_objects)
        marker.write_text(json.dumps(meta))
    bundle = coco(str(folder))
    bundle.name = "coco_shapes"
    return bundle
