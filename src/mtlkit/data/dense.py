"""Dense-prediction datasets: procedural shape scenes, and NYUv2 / Cityscapes as ``.npy`` files.

Three registered datasets, each with per-pixel tasks of the kinds in :mod:`mtlkit.tasks.dense`:

- ``dense_scenes``: scenes of :func:`mtlkit.data.shapes.make_scene` (no download) with tasks
  ``segmentation`` (background + one class per shape), ``depth`` and ``normals``.
- ``nyuv2_npy``: NYUv2 (Silberman et al., 2012, "Indoor Segmentation and Support Inference
  from RGBD Images", ECCV) as preprocessed for the MTAN benchmark (Liu, Johns & Davison,
  2019, "End-to-End Multi-Task Learning with Attention", CVPR) and the LibMTL examples:
  13-class ``segmentation``, ``depth`` and ``normals``.
- ``cityscapes_npy``: Cityscapes (Cordts et al., 2016, "The Cityscapes Dataset for Semantic
  Urban Scene Understanding", CVPR) in the same preprocessed form: 7- or 19-class
  ``segmentation`` and ``depth`` (inverse-disparity maps).

**The accepted ``.npy`` layout** (that of MTAN's and LibMTL's ``create_dataset.py``)::

    {root}/train/image/0.npy  label/0.npy  depth/0.npy  [normal/0.npy]
    {root}/val/...            (the same, one file per sample in each folder)

- ``image``: ``(H, W, 3)`` (channels last, as in those files) or ``(3, H, W)``; floats are
  kept as they are (MTAN stores [0, 1] floats), ``uint8`` is divided by 255.
- ``label``: ``(H, W)``, integer-valued (MTAN stores them as floats); ``-1`` (MTAN, LibMTL)
  and ``255`` mark unlabelled pixels, which the segmentation loss and metrics ignore.
  Cityscapes labels are read from ``label_{classes}/`` when that folder exists (MTAN keeps
  ``label_7`` and ``label_19``), else from ``label/``.
- ``depth``: ``(H, W, 1)``, ``(1, H, W)`` or ``(H, W)``; pixels ≤ 0 or not finite are missing.
- ``normal`` (NYUv2 only): ``(H, W, 3)`` or ``(3, H, W)``; zero vectors are missing.

Every folder must hold the same file names (``0.npy, 1.npy, …``; sorted by number when all are
numbers), and every array of a sample must have the same ``(H, W)`` as the first image; any
other shape, a missing file or an unreadable one raises :class:`~mtlkit.errors.DatasetError`
naming the file. NYUv2 arrays are ``288 × 384``, Cityscapes ``128 × 256``; ``size`` resizes at
load time (bilinear for images and normals, which are renormalised, nearest for labels and
depth), to fit CPU memory and time. The files have only ``train`` and ``val``: as in MTAN and
LibMTL, ``val`` is reported as the **test** split, and the validation split used for model
selection is a seeded ``val_fraction`` of ``train`` (or ``{root}/test`` is the test split and
``val`` the validation split, when a ``test`` folder exists).

The default encoder is the small ResNet without pooling (``resnet``, ``pool: false``) and every
task's head is ``dense`` with ``out_size`` the image size, so outputs match the targets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.data.shapes import CATEGORIES, make_scene
from mtlkit.errors import DatasetError
from mtlkit.tasks import Task

IGNORE_LABELS = (-1, 255)
NYUV2_CLASSES = 13
CITYSCAPES_CLASSES = (7, 19)


def dense_tasks(
    classes: int, size: tuple[int, int], normals: bool = True, hidden: tuple[int, ...] = (64,)
) -> list[Task]:
    """``segmentation`` (``classes`` classes), ``depth`` and optionally ``normals``, each with
    a ``dense`` head upsampling to ``size``."""
    head = {"out_size": list(size), "hidden": list(hidden)}
    tasks = [
        Task("segmentation", "segmentation", classes, head="dense", head_params=dict(head)),
        Task("depth", "depth", 1, head="dense", head_params=dict(head)),
    ]
    if normals:
        tasks.append(Task("normals", "normals", 3, head="dense", head_params=dict(head)))
    return tasks


def _encoder(size: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    stem = 2 if min(size) >= 96 else 1
    return "resnet", {"in_channels": 3, "pool": False, "widths": [16, 32, 64], "stem_stride": stem}


# --------------------------------------------------------------------------- shape scenes


def scene_split(
    rng: np.random.Generator, n: int, height: int, width: int, max_objects: int, name: str
) -> TensorSplit:
    """``n`` scenes of :func:`make_scene` as images and segmentation/depth/normal targets."""
    scenes = [make_scene(rng, height, width, max_objects) for _ in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in scenes]))
    targets = {
        "segmentation": torch.from_numpy(np.stack([s.semantic for s in scenes])),
        "depth": torch.from_numpy(np.stack([s.depth for s in scenes])),
        "normals": torch.from_numpy(np.stack([s.normals for s in scenes])),
    }
    return TensorSplit(images, targets, name)


@DATASETS.register("dense_scenes")
def dense_scenes(
    seed: int = 0,
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 128,
    height: int = 32,
    width: int = 32,
    max_objects: int = 4,
) -> DataBundle:
    """Procedural shape scenes (see :mod:`mtlkit.data.shapes`) with segmentation into
    background + ``CATEGORIES``, depth and surface normals; deterministic given ``seed``."""
    if min(n_train, n_val, n_test) < 1:
        raise DatasetError(
            f"dataset 'dense_scenes': n_train, n_val and n_test must be ≥ 1, "
            f"got {n_train}, {n_val}, {n_test}"
        )
    rng = np.random.default_rng(seed)
    splits = [
        scene_split(rng, n, height, width, max_objects, name)
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test))
    ]
    return DataBundle(
        "dense_scenes",
        *splits,
        tasks=dense_tasks(len(CATEGORIES) + 1, (height, width)),
        encoder=_encoder((height, width)),
        info={"classes": ["background", *CATEGORIES], "image_size": [height, width]},
    )


# --------------------------------------------------------------------------- .npy folders


def _stems(folder: Path) -> list[str]:
    stems = [p.stem for p in folder.glob("*.npy")]
    if all(re.fullmatch(r"\d+", s) for s in stems):
        return sorted(stems, key=int)
    return sorted(stems)


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None


def _channels_first(array: np.ndarray, channels: int, path: Path, what: str) -> np.ndarray:
    """``(C, H, W)`` from ``(H, W, C)`` or ``(C, H, W)``; for one channel also ``(H, W)``."""
    if array.ndim == 2 and channels == 1:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    layouts = "(H, W, 1), (1, H, W) or (H, W)" if channels == 1 else f"(H, W, {channels})"
    raise DatasetError(
        f"{path}: {what} array has shape {array.shape}, expected {layouts}"
        + ("" if channels == 1 else f" or ({channels}, H, W)")
    )


def _check_size(array: np.ndarray, hw: tuple[int, int], path: Path, what: str) -> None:
    if tuple(array.shape[-2:]) != hw:
        raise DatasetError(
            f"{path}: {what} has size {tuple(array.shape[-2:])} (shape {array.shape}), "
            f"but the sample's image is {hw[0]} × {hw[1]}"
        )


def _label(array: np.ndarray, classes: int, path: Path) -> np.ndarray:
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise DatasetError(f"{path}: label array has shape {array.shape}, expected (H, W)")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DatasetError(f"{path}: label array holds values that are not whole numbers")
    elif array.dtype.kind not in "iu":
        raise DatasetError(f"{path}: label array has dtype {array.dtype}, expected integers")
    labels = array.astype(np.int64)
    bad = ~np.isin(labels, IGNORE_LABELS) & ((labels < 0) | (labels >= classes))
    if bad.any():
        raise DatasetError(
            f"{path}: label {int(labels[bad][0])} is outside [0, {classes}) "
            f"(−1 and 255 mark unlabelled pixels)"
        )
    return labels


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def read_npy_split(
    folder: str | Path,
    classes: int,
    normals: bool,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    label_dir: str = "label",
    name: str = "split",
) -> TensorSplit:
    """One split of the preprocessed layout (see the module docstring) as a TensorSplit.

    Inputs are images ``(N, 3, H, W)`` float32; targets ``segmentation`` ``(N, H, W)`` int64,
    ``depth`` ``(N, H, W)`` float32 and, with ``normals``, ``normals`` ``(N, 3, H, W)``.
    """
    folder = Path(folder)
    parts = {"image": "image", "label": label_dir, "depth": "depth"}
    if normals:
        parts["normal"] = "normal"
    for part, sub in parts.items():
        if not (folder / sub).is_dir():
            raise DatasetError(f"missing folder {folder / sub} (the {part} arrays)")
    stems = _stems(folder / "image")
    if not stems:
        raise DatasetError(f"no .npy files in {folder / 'image'}")
    for sub in parts.values():
        extra = sorted(set(_stems(folder / sub)) - set(stems))
        if extra:
            raise DatasetError(f"{folder / sub / (extra[0] + '.npy')} has no matching image")
    if limit is not None:
        stems = stems[:limit]
    images, labels, depths, normal_maps = [], [], [], []
    hw0: tuple[int, int] | None = None
    for stem in stems:
        path = folder / "image" / f"{stem}.npy"
        image = _channels_first(_load(path), 3, path, "image")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        hw = (int(image.shape[1]), int(image.shape[2]))
        if hw0 is None:
            hw0 = hw
        elif hw != hw0:
            raise DatasetError(
                f"{path}: image is {hw[0]} × {hw[1]}, the first is {hw0[0]} × {hw0[1]}"
            )
        path = folder / label_dir / f"{stem}.npy"
        label = _label(_load(path), classes, path)
        _check_size(label, hw, path, "label")
        path = folder / "depth" / f"{stem}.npy"
        depth = _channels_first(_load(path), 1, path, "depth")
        _check_size(depth, hw, path, "depth")
        images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
        labels.append(torch.from_numpy(label))
        depths.append(torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)))
        if normals:
            path = folder / "normal" / f"{stem}.npy"
            normal = _channels_first(_load(path), 3, path, "normal")
            _check_size(normal, hw, path, "normal")
            normal_maps.append(torch.from_numpy(np.ascontiguousarray(normal, dtype=np.float32)))
    x = torch.stack(images)
    seg = torch.stack(labels)
    depth_t = torch.stack(depths)
    normal_t = torch.stack(normal_maps) if normals else None
    if size is not None:
        x = _resize(x, size, "bilinear")
        seg = _resize(seg[:, None].float(), size, "nearest")[:, 0].long()
        depth_t = _resize(depth_t, size, "nearest")
        if normal_t is not None:
            valid = (normal_t != 0).any(dim=1, keepdim=True).float()
            normal_t = F.normalize(_resize(normal_t, size, "bilinear"), dim=1)
            normal_t = normal_t * (_resize(valid, size, "nearest") > 0)
    seg = torch.where(seg == 255, torch.full_like(seg, -1), seg)
    targets = {"segmentation": seg, "depth": depth_t[:, 0]}
    if normal_t is not None:
        targets["normals"] = normal_t
    return TensorSplit(x, targets, name)


def _size(size: Any, dataset: str) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise DatasetError(
            f"dataset '{dataset}': option 'size' must be (height, width) ≥ 1, got {size}"
        )
    return int(pair[0]), int(pair[1])


def load_npy_dataset(
    dataset: str,
    root: str | Path,
    classes: int,
    normals: bool,
    size: Any = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_dir: str = "label",
) -> DataBundle:
    """A DataBundle from the preprocessed layout under ``root`` (see the module docstring)."""
    root = Path(root).expanduser()
    where = f"dataset '{dataset}'"
    if not root.is_dir():
        raise DatasetError(f"{where}: option 'root': {root} is not a folder")
    if limit is not None and limit < 1:
        raise DatasetError(f"{where}: option 'limit' must be ≥ 1, got {limit}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"{where}: option 'val_fraction' must be in (0, 1), got {val_fraction}")
    hw = _size(size, dataset)

    def read(split: str, name: str) -> TensorSplit:
        return read_npy_split(root / split, classes, normals, hw, limit, label_dir, name)

    if (root / "test").is_dir():
        train, val, test = read("train", "train"), read("val", "val"), read("test", "test")
    else:
        full, test = read("train", "train"), read("val", "test")
        n = len(full)
        n_val = max(1, round(val_fraction * n))
        if n_val >= n:
            raise DatasetError(
                f"{where}: {n} training sample(s) leave none after the validation share"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train = TensorSplit(*full[order[n_val:]], name="train")
        val = TensorSplit(*full[order[:n_val]], name="val")
    image_size = tuple(train.inputs.shape[-2:])
    return DataBundle(
        dataset,
        train,
        val,
        test,
        tasks=dense_tasks(classes, image_size, normals=normals),
        encoder=_encoder(image_size),
        info={"root": str(root), "image_size": list(image_size), "classes": classes},
    )


@DATASETS.register("nyuv2_npy")
def nyuv2_npy(
    root: str,
    size: int | tuple[int, int] | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataBundle:
    """NYUv2 from MTAN/LibMTL ``.npy`` files under ``root``: 13-class segmentation, depth,
    normals (see the module docstring for the layout and the splits)."""
    return load_npy_dataset("nyuv2_npy", root, NYUV2_CLASSES, True, size, limit, val_fraction, seed)


@DATASETS.register("cityscapes_npy")
def cityscapes_npy(
    root: str,
    classes: int = 7,
    size: int | tuple[int, int] | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataBundle:
    """Cityscapes from MTAN/LibMTL ``.npy`` files under ``root``: ``classes``-class (7 or 19)
    segmentation and depth (see the module docstring for the layout and the splits)."""
    if classes not in CITYSCAPES_CLASSES:
        raise DatasetError(
            f"dataset 'cityscapes_npy': option 'classes' must be 7 or 19, got {classes}"
        )
    label_dir = (
        f"label_{classes}"
        if (Path(root).expanduser() / "train" / f"label_{classes}").is_dir()
        else "label"
    )
    return load_npy_dataset(
        "cityscapes_npy", root, classes, False, size, limit, val_fraction, seed, label_dir
    )


__all__ = [
    "cityscapes_npy",
    "dense_scenes",
    "dense_tasks",
    "load_npy_dataset",
    "nyuv2_npy",
    "read_npy_split",
    "scene_split",
]
