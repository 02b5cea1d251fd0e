"""COCO segmentations as masks: run-length encoding (RLE) and polygons.

COCO stores an object's mask either as polygons ``[[x1, y1, x2, y2, ...], ...]`` or as RLE
``{"size": [h, w], "counts": ...}``, with ``counts`` uncompressed (a list of run lengths) or
in the compressed string of the COCO API. pycocotools is not needed: RLE is decoded and
encoded here, and polygons are rasterised with ``matplotlib.path`` — a pixel belongs to a
polygon when its centre lies inside (COCO's own rasteriser differs by at most a pixel along
the border). Bad counts raise ValueError; the reader (:mod:`mtlkit.data.coco.io`) turns it
into an error naming the file and the annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlkit.errors import require

__all__ = [
    "encode_mask",
    "polygons_to_mask",
    "rle_decode",
    "rle_encode",
    "rle_from_string",
    "rle_to_string",
]


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
    MplPath = require("matplotlib.path", "datasets", "rasterising COCO polygons").Path

    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    mask = np.zeros(height * width, dtype=bool)
    for poly in polygons:
        points = np.asarray(poly, dtype=float).reshape(-1, 2)
        mask |= MplPath(points).contains_points(centres)
    return mask.reshape(height, width)
