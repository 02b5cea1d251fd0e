"""COCO-format datasets: reader, writer, and the ``coco`` and ``coco_shapes`` datasets.

The COCO annotation format (Lin et al., 2014, "Microsoft COCO: Common Objects in Context",
ECCV) read and written without pycocotools; every image becomes three targets (``labels``,
``detection``, ``segmentation``), one per task of the dataset. One module per job:

- :mod:`~mtlkit.data.coco.masks`: RLE encoding and decoding (uncompressed counts and the
  COCO API's compressed string), polygon rasterisation;
- :mod:`~mtlkit.data.coco.io`: reading and checking annotation files, reading images,
  writing a COCO folder; bad records raise :class:`CocoFormatError` naming the file and the
  record;
- :mod:`~mtlkit.data.coco.bundles`: a COCO folder as tensors and tasks, and the registered
  datasets ``coco`` and ``coco_shapes``.
"""

from mtlkit.data.coco.bundles import coco, coco_shapes, coco_split, vision_tasks, write_shapes
from mtlkit.data.coco.io import (
    CocoAnnotation,
    CocoDataset,
    CocoFormatError,
    CocoImage,
    read_coco,
    read_image,
    write_coco,
)
from mtlkit.data.coco.masks import (
    encode_mask,
    polygons_to_mask,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
)

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
