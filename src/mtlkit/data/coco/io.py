"""COCO-format datasets: reader, writer, and the ``coco`` and ``coco_shapes`` datasets.

The COCO annotation format (Lin et al., 2014, "Microsoft COCO: Common Objects in Context",
ECCV; the ``instances_*.json`` files): ``images`` (``id``, ``file_name``, ``width``,
``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``id``, ``image_id``,
``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, ``segmentation`` as a list of polygons
``[x1, y1, x2, y2, ...]`` or as run-length encoding (RLE) ``{"size": [h, w], "counts": ...}``,
``area``, ``iscrowd``). pycocotools is not needed: RLE (uncompressed counts and the compressed
string of the COCO API) is decoded and encoded here, and polygons are rasterised with
``matplotlib.path`` — a pixel belongs to a polygon when its centre lies inside (COCO's own
rasteriser differs by at most a pixel along the border).

Every image becomes three targets, one per task of the dataset:

- ``labels`` (multi-label, ``(N, K)`` floats in {0, 1}): which categories appear;
- ``detection`` (``(N, M, 5)`` rows ``(x1, y1, x2, y2, class)`` padded with class −1, see
  :mod:`mtlkit.tasks.boxes`): the non-crowd boxes (crowd regions are not detection targets,
  as in the usual COCO training recipes);
- ``segmentation`` (``(N, H, W)`` int64, 0 = background, k = the k-th category in id order):
  the union of the masks, larger objects first so smaller ones stay on top.

Classes are the categories sorted by id, numbered from 0 (detection, labels) or from 1
(segmentation). Images must share one size unless ``image_size`` is given, which resizes
images (bilinear), masks (nearest) and boxes. Images are read with ``matplotlib.pyplot.imread``
(PNG; JPEG through Pillow) or ``numpy.load`` (``.npy`` holding ``(H, W, 3)`` floats in [0, 1]).

Bad records raise :class:`CocoFormatError` naming the file and the record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import DatasetError, TaskDataError
from mtlkit.tasks import Task

SPLITS = ("train", "val", "test")


class CocoFormatError(DatasetError, TaskDataError):
    """A COCO file or record is malformed; the message names the file and the record."""


# --------------------------------------------------------------------------- RLE and polygons


def rle_encode(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a (H, W) mask: run lengths in column-major order,
    starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of uncompressed RLE ``counts``."""
    counts = [int(c) for c in counts]
    if sum(counts) != height * width or any(c < 0 for c in counts):
        raise ValueError(f"RLE counts sum to {sum(counts)}, not height × width = {height * width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def rle_to_string(counts: Sequence[int]) -> str:
    """The COCO API's compressed form of RLE counts: each count (from the third on, as the
    difference to the count two before) in little-endian groups of 5 bits, one character
    ``48 + group`` each, with bit 0x20 set on all groups but the last (sign-extended)."""
    chars: list[str] = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_from_string(text: str) -> list[int]:
    """Uncompressed counts of the COCO API's compressed RLE string (inverse of
    :func:`rle_to_string`)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("compressed RLE string ends inside a count")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE string has the invalid character {text[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_mask(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """A COCO RLE segmentation ``{"size": [h, w], "counts": ...}`` of a (H, W) mask."""
    counts = rle_encode(mask)
    h, w = np.asarray(mask).shape
    return {"size": [int(h), int(w)], "counts": rle_to_string(counts) if compressed else counts}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]``: the pixels whose centre lies
    inside any of them."""
    from matplotlib.path import Path as MplPath

    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    mask = np.zeros(height * width, dtype=bool)
    for poly in polygons:
        points = np.asarray(poly, dtype=float).reshape(-1, 2)
        mask |= MplPath(points).contains_points(centres)
    return mask.reshape(height, width)


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
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
    else:
        import matplotlib.pyplot as plt

        arr = plt.imread(path)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise CocoFormatError(f"image file {path}: shape {arr.shape} is not (H, W, 3)")
    return np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))


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
            import matplotlib.pyplot as plt

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
        found = json.loads(marker.read_text())
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


__all__ = [
    "CocoAnnotation",
    "CocoDataset",
    "CocoFormatError",
    "CocoImage",
    "coco",
    "coco_shapes",
    "coco_split",
    "encode_mask",
    "polygons_to_mask",
    "read_coco",
    "read_image",
    "rle_decode",
    "rle_encode",
    "rle_from_string",
    "rle_to_string",
    "vision_tasks",
    "write_coco",
    "write_shapes",
]
