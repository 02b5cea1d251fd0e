"""Procedural scenes of shapes on a floor, with class maps, instances, depth and normals.

A small stand-in for indoor scene datasets (NYUv2) whose every label is exact, so the dense heads
(segmentation, depth, surface normals) and the detection-style tasks can train end to end in
tests and examples without downloads. One call of :func:`make_scene` renders one scene:

1. **Camera and floor.** A pinhole camera with focal length ``f = max(H, W)`` pixels looks down
   at a floor with pitch ``α ~ U(35°, 45°)``, from height ``h = 2``. The floor's depth is
   ``z(v) = h / (cos α · v + sin α)`` with ``v = (row − c_y) / f`` (exact plane geometry), and its
   normal is ``(0, −cos α, sin α)``. The floor carries a checkerboard laid on the plane, so its
   texture shrinks with distance (a depth cue).
2. **Objects.** ``n ~ U{1, …, max_objects}`` objects, each a category of :data:`CATEGORIES`,
   stand on the floor: an object whose base is at image row ``y_b`` sits at depth
   ``≈ z(y_b)`` and has a pixel size ``s · f / depth`` for a world size ``s ~ U(0.5, 0.9)``
   (perspective). A *circle* is a sphere: analytic normals ``((x − c_x)/r, (y − c_y)/r, n_z)``
   and depth ``d_c − R · n_z``. A *square* and a *triangle* are flat faces with a random tilt
   (normal ``∝ (a, b, 1)``, ``|a|, |b| ≤ 0.4``) and the plane's depth.
3. **Occlusion.** A z-buffer over the floor and all objects: at each pixel the nearest surface
   wins, so the class map, instance map, depth, normals and image agree everywhere. Objects
   left with no visible pixel are dropped; each kept object's ``mask`` is its visible pixels and
   its ``box`` the tight bounding box of that mask.
4. **Image.** Lambertian shading of a per-object random colour (the floor: a tinted checker)
   under a fixed light, ``albedo · (0.3 + 0.7 · max(0, n · l))``, plus Gaussian noise
   (σ = 0.02), clipped to [0, 1]. Shading carries the normals; size and the floor carry depth.

Conventions: normals are unit vectors in the camera frame with x to the right, y down the
image and z towards the viewer (a face looking at the camera is ``(0, 0, 1)``); depth is the
z-distance from the camera plane (as in NYUv2), always > 0. Pixel ``(row, col)`` covers the
unit square ``[col, col + 1) × [row, row + 1)``; a box is ``(x, y, w, h)`` in COCO convention,
``x = first column``, ``w = last column − first column + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtlkit.errors import ConfigError

#: object categories; category ``k`` (1-based) is ``CATEGORIES[k - 1]``; 0 is the background
CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle")

CAMERA_HEIGHT = 2.0
LIGHT = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
MIN_SIZE, MAX_SIZE = 8, 1024
MAX_OBJECTS = 255


@dataclass
class SceneObject:
    """One visible object: 1-based ``category``, COCO ``box`` (x, y, w, h) of its visible mask,
    the visible ``mask`` (H, W) bool, and ``depth``, the z of its nearest surface point."""

    category: int
    box: tuple[float, float, float, float]
    mask: np.ndarray
    depth: float


@dataclass
class Scene:
    """One rendered scene; see the module docstring for the conventions.

    ``image`` (3, H, W) float32 in [0, 1]; ``semantic`` (H, W) int64, 0 = floor, k = category;
    ``instances`` (H, W) int64, 0 = none, i = ``objects[i - 1]``; ``depth`` (H, W) float32 > 0;
    ``normals`` (3, H, W) float32 unit vectors; ``objects`` the visible objects.
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The COCO box ``(x, y, w, h)`` of the pixels set in a non-empty (H, W) ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("tight_box: the mask is empty")
    return (
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
    )


def _check(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ConfigError(
            f"make_scene: option '{name}' must be an integer in [{low}, {high}], got {value!r}"
        )


def _shape(
    category: int, xs: np.ndarray, ys: np.ndarray, cx: float, base: float, size: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The full (unoccluded) mask of a shape of pixel ``size`` whose base is at row ``base``;
    for a circle also the sphere's ``n_z`` over the image (None for flat faces)."""
    name = CATEGORIES[category - 1]
    if name == "circle":
        r = size / 2.0
        cy = base - r
        u, v = (xs - cx) / r, (ys - cy) / r
        inside = u * u + v * v <= 1.0
        return inside, np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    if name == "square":
        half = size / 2.0
        inside = (np.abs(xs - cx) <= half) & (ys <= base) & (ys >= base - size)
        return inside, None
    # an upward isosceles triangle: base width = height = size
    top = base - size
    frac = np.clip((ys - top) / size, 0.0, None)  # 0 at the apex, 1 at the base
    inside = (ys >= top) & (ys <= base) & (np.abs(xs - cx) <= frac * size / 2.0)
    return inside, None


def make_scene(
    rng: np.random.Generator, height: int = 64, width: int = 64, max_objects: int = 4
) -> Scene:
    """Render one random scene of ``height × width`` pixels with up to ``max_objects`` objects.

    Deterministic given the state of ``rng``. See the module docstring for the model.
    """
    _check("height", height, MIN_SIZE, MAX_SIZE)
    _check("width", width, MIN_SIZE, MAX_SIZE)
    _check("max_objects", max_objects, 0, MAX_OBJECTS)
    f = float(max(height, width))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    cx0, cy0 = width / 2.0, height / 2.0

    # 1. floor: exact plane geometry, constant normal, checker texture on the plane
    pitch = np.deg2rad(rng.uniform(35.0, 45.0))
    floor_z = CAMERA_HEIGHT / (np.cos(pitch) * (ys - cy0) / f + np.sin(pitch))
    floor_n = np.array([0.0, -np.cos(pitch), np.sin(pitch)])
    world_x = (xs - cx0) * floor_z / f
    checker = (np.floor(world_x / 0.7) + np.floor(floor_z / 0.7)) % 2
    tint = rng.uniform(0.5, 0.8, size=3)
    depth = floor_z.copy()
    normals = np.broadcast_to(floor_n[:, None, None], (3, height, width)).copy()
    albedo = tint[:, None, None] * (0.75 + 0.25 * checker)[None]
    owner = np.zeros((height, width), dtype=np.int64)  # 0 = floor, i = candidate i

    # 2. objects, drawn into the z-buffer one by one (nearest surface wins)
    n_objects = int(rng.integers(min(1, max_objects), max_objects + 1))
    categories: list[int] = []
    for i in range(1, n_objects + 1):
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        base = rng.uniform(0.35 * height, height - 0.5)
        cx = rng.uniform(0.0, width)
        ground = CAMERA_HEIGHT / (np.cos(pitch) * (base - cy0) / f + np.sin(pitch))
        size = max(4.0, rng.uniform(0.5, 0.9) * f / ground)
        inside, nz = _shape(category, xs, ys, cx, base, size)
        colour = rng.uniform(0.2, 1.0, size=3)
        if nz is not None:  # sphere of world radius R with its centre at the floor depth
            radius_px = size / 2.0
            world_r = radius_px * ground / f
            z = ground - world_r * nz
            obj_n = np.stack([(xs - cx) / radius_px, (ys - (base - radius_px)) / radius_px, nz])
            obj_n /= np.maximum(np.linalg.norm(obj_n, axis=0, keepdims=True), 1e-12)
        else:  # a tilted flat face through (cx, centre row) at 0.9 × the floor depth
            a, b = rng.uniform(-0.4, 0.4, size=2)
            centre_z = 0.9 * ground
            z = centre_z + (a * (xs - cx) + b * (ys - (base - size / 2.0))) * centre_z / f
            obj_n = np.broadcast_to(
                (np.array([a, b, 1.0]) / np.sqrt(a * a + b * b + 1.0))[:, None, None],
                (3, height, width),
            )
        wins = inside & (z > 0) & (z < depth)
        depth = np.where(wins, z, depth)
        normals = np.where(wins[None], obj_n, normals)
        albedo = np.where(wins[None], colour[:, None, None], albedo)
        owner[wins] = i
        categories.append(category)

    # 3. keep the visible objects, renumbered in drawing order
    semantic = np.zeros((height, width), dtype=np.int64)
    instances = np.zeros((height, width), dtype=np.int64)
    objects: list[SceneObject] = []
    for i, category in enumerate(categories, start=1):
        mask = owner == i
        if not mask.any():
            continue
        objects.append(SceneObject(category, tight_box(mask), mask, float(depth[mask].min())))
        semantic[mask] = category
        instances[mask] = len(objects)

    # 4. Lambertian shading and sensor noise
    shade = 0.3 + 0.7 * np.clip(np.tensordot(LIGHT, normals, axes=1), 0.0, None)
    image = albedo * shade[None] + rng.normal(0.0, 0.02, size=(3, height, width))
    return Scene(
        image=np.clip(image, 0.0, 1.0).astype(np.float32),
        semantic=semantic,
        instances=instances,
        depth=depth.astype(np.float32),
        normals=normals.astype(np.float32),
        objects=objects,
    )


__all__ = ["CATEGORIES", "Scene", "SceneObject", "make_scene", "tight_box"]
