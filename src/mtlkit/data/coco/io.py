"""COCO annotation files: reading and checking them, reading images, writing them.

The COCO annotation format (Lin et al., 2014, "Microsoft COCO: Common Objects in Context",
ECCV; the ``instances_*.json`` files): ``images`` (``id``, ``file_name``, ``width``,
``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``id``, ``image_id``,
``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, ``segmentation`` as a list of polygons
or as RLE, see :mod:`mtlkit.data.coco.masks`, ``area``, ``iscrowd``). Images are read with
``matplotlib.pyplot.imread`` (PNG; JPEG through Pillow) or ``numpy.load`` (``.npy`` holding
``(H, W, 3)`` floats in [0, 1]).

Bad records raise :class:`CocoFormatError` naming the file and the record (the annotation
id, or the position of a record that has none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.data.coco.masks import encode_mask, polygons_to_mask, rle_decode, rle_from_string
from mtlkit.errors import DatasetError, TaskDataError, require
from mtlkit.files import read_text

__all__ = [
    "CocoAnnotation",
    "CocoDataset",
    "CocoFormatError",
    "CocoImage",
    "read_coco",
    "read_image",
    "write_coco",
]


class CocoFormatError(DatasetError, TaskDataError):
    """A COCO file or record is malformed; the message names the file and the record."""


# --------------------------------------------------------------------------- reading


@dataclass
class CocoAnnotation:
    """One object: ``category`` (COCO id), ``box`` (x, y, w, h), ``segmentation`` as in the
    file (or None), ``iscrowd`` and its ``id``."""

    id: int
    category: int
    box: tuple[float, float, float, float]
    segmentation: Any
    iscrowd: bool


@dataclass
class CocoImage:
    """One image record and its annotations."""

    id: int
    file_name: str
    width: int
    height: int
    annotations: list[CocoAnnotation] = field(default_factory=list)


@dataclass
class CocoDataset:
    """A parsed COCO annotation file: categories (id → name, in id order) and images."""

    path: Path
    image_dir: Path
    categories: dict[int, str]
    images: list[CocoImage]

    @property
    def class_index(self) -> dict[int, int]:
        """COCO category id → 0-based class index (categories sorted by id)."""
        return {cid: i for i, cid in enumerate(sorted(self.categories))}

    def mask(self, image: CocoImage, ann: CocoAnnotation) -> np.ndarray:
        """The (H, W) mask of an annotation (its box when it has no segmentation)."""
        where = f"{self.path}: annotation id {ann.id}"
        seg, h, w = ann.segmentation, image.height, image.width
        if seg is None or (isinstance(seg, list) and not seg):
            x, y, bw, bh = ann.box
            out = np.zeros((h, w), dtype=bool)
            out[round(y) : round(y + bh), round(x) : round(x + bw)] = True
            return out
        if isinstance(seg, list):
            return polygons_to_mask(seg, h, w)
        size = [int(v) for v in seg["size"]]
        if size != [h, w]:
            raise CocoFormatError(
                f"{where}: RLE size {size} differs from its image's (height, width) {[h, w]}"
            )
        try:
            counts = seg["counts"]
            counts = rle_from_string(counts) if isinstance(counts, str) else counts
            return rle_decode(counts, h, w)
        except ValueError as err:
            raise CocoFormatError(f"{where}: bad RLE segmentation: {err}") from None


def _require(record: dict[str, Any], keys: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise CocoFormatError(f"{where}: is a {type(record).__name__}, not an object")
    missing = [k for k in keys if k not in record]
    if missing:
        raise CocoFormatError(f"{where}: missing field(s) {', '.join(missing)}")


def _check_segmentation(seg: Any, where: str) -> None:
    if seg is None:
        return
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) % 2:
                raise CocoFormatError(
                    f"{where}: segmentation polygon {i} is not a flat list of x, y pairs"
                )
            if len(poly) < 6:
                raise CocoFormatError(
                    f"{where}: segmentation polygon {i} has {len(poly) // 2} point(s); "
                    "a polygon needs at least 3"
                )
        return
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return
    raise CocoFormatError(
        f"{where}: segmentation must be a list of polygons or an RLE object with "
        "'size' and 'counts'"
    )


def read_coco(annotation_file: str | Path, image_dir: str | Path | None = None) -> CocoDataset:
    """Parse and check a COCO annotation file; images are looked up in ``image_dir``
    (default: the file's folder)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise CocoFormatError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(read_text(path, "COCO annotation file", CocoFormatError))
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path}: not valid JSON ({err})") from None
    _require(data, ("images", "annotations", "categories"), str(path))
    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        _require(cat, ("id", "name"), where)
        if cat["id"] in categories:
            raise CocoFormatError(f"{where}: category id {cat['id']} appears twice")
        categories[int(cat["id"])] = str(cat["name"])
    images: dict[int, CocoImage] = {}
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        _require(img, ("id", "file_name", "width", "height"), where)
        if img["id"] in images:
            raise CocoFormatError(f"{where}: image id {img['id']} appears twice")
        if int(img["width"]) < 1 or int(img["height"]) < 1:
            raise CocoFormatError(
                f"{where} (id {img['id']}): width and height must be ≥ 1, "
                f"got {img['width']} × {img['height']}"
            )
        images[int(img["id"])] = CocoImage(
            int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"])
        )
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        _require(ann, ("id", "image_id", "category_id", "bbox"), where)
        where = f"{path}: annotation id {ann['id']}"
        if ann["image_id"] not in images:
            raise CocoFormatError(
                f"{where} refers to image_id {ann['image_id']}, which is not in 'images'"
            )
        if ann["category_id"] not in categories:
            raise CocoFormatError(
                f"{where} refers to category_id {ann['category_id']}, which is not in 'categories'"
            )
        box = ann["bbox"]
        if not isinstance(box, list) or len(box) != 4:
            raise CocoFormatError(f"{where}: bbox must be [x, y, width, height], got {box!r}")
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise CocoFormatError(f"{where}: bbox {box} has a non-finite value")
        if w < 0 or h < 0:
            raise CocoFormatError(f"{where}: bbox {box} has a negative width or height")
        seg = ann.get("segmentation")
        _check_segmentation(seg, where)
        images[ann["image_id"]].annotations.append(
            CocoAnnotation(
                int(ann["id"]),
                int(ann["category_id"]),
                (x, y, w, h),
                seg,
                bool(ann.get("iscrowd", 0)),
            )
        )
    folder = Path(image_dir) if image_dir is not None else path.parent
    return CocoDataset(path, folder, categories, list(images.values()))


def read_image(path: Path) -> np.ndarray:
    """An image file as (3, H, W) float32 in [0, 1] (see the module docstring)."""
    if not path.is_file():
        raise CocoFormatError(f"image file {path} does not exist")
    plt = None
    if path.suffix.lower() != ".npy":
        plt = require("matplotlib.pyplot", "datasets", "reading COCO image files")
    try:
        arr = np.load(path, allow_pickle=False) if plt is None else plt.imread(path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: OSError; np.load: ValueError
        raise CocoFormatError(f"cannot read image file {path}: {err}") from None
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise CocoFormatError(f"image file {path}: shape {arr.shape} is not (H, W, 3)")
    return np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))


# --------------------------------------------------------------------------- writing


def write_coco(
    scenes: Sequence[Any],
    root: str | Path,
    split: str,
    categories: Sequence[str],
    image_format: str = "png",
) -> Path:
    """Write scenes as a COCO dataset: ``root/images/{split}/{id:06d}.{png|npy}`` and
    ``root/annotations/instances_{split}.json``; returns the annotation file.

    A scene has ``image`` (3, H, W) in [0, 1] and ``objects`` with a 1-based ``category``,
    a COCO ``box`` and a (H, W) ``mask`` (as :class:`mtlkit.data.shapes.Scene`). Masks are
    written as compressed RLE; PNG stores 8 bits per channel, ``.npy`` the exact floats.
    """
    if image_format not in ("png", "npy"):
        raise CocoFormatError(f"write_coco: image_format must be png or npy, got {image_format}")
    root = Path(root)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, scene in enumerate(scenes, start=1):
        pixels = np.clip(np.asarray(scene.image, dtype=np.float32), 0, 1).transpose(1, 2, 0)
        name = f"{i:06d}.{image_format}"
        if image_format == "png":
            plt = require("matplotlib.pyplot", "datasets", "writing PNG images")
            plt.imsave(image_dir / name, pixels)
        else:
            np.save(image_dir / name, pixels)
        h, w = pixels.shape[:2]
        images.append({"id": i, "file_name": name, "width": int(w), "height": int(h)})
        for obj in scene.objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(obj.category),
                    "bbox": [float(v) for v in obj.box],
                    "area": int(np.asarray(obj.mask).sum()),
                    "segmentation": encode_mask(obj.mask),
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for k, n in enumerate(categories, start=1)],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path
