"""The procedural shapes scenes: labels agree with each other and with the geometry."""

from __future__ import annotations

import numpy as np
import pytest

from mtlkit.data.shapes import CATEGORIES, Scene, make_scene, tight_box
from mtlkit.errors import ConfigError


def scenes(n: int = 12, **kw: int) -> list[Scene]:
    rng = np.random.default_rng(0)
    return [make_scene(rng, **kw) for _ in range(n)]


def test_types_shapes_and_ranges() -> None:
    for s in scenes(6, height=40, width=56):
        assert s.image.shape == (3, 40, 56) and s.image.dtype == np.float32
        assert s.image.min() >= 0.0 and s.image.max() <= 1.0
        assert s.semantic.shape == (40, 56) and s.semantic.dtype == np.int64
        assert s.instances.shape == (40, 56) and s.instances.dtype == np.int64
        assert s.depth.shape == (40, 56) and s.depth.dtype == np.float32
        assert s.normals.shape == (3, 40, 56) and s.normals.dtype == np.float32
        assert np.all(s.depth > 0) and np.all(np.isfinite(s.depth))
        np.testing.assert_allclose(np.linalg.norm(s.normals, axis=0), 1.0, atol=1e-5)
        assert set(np.unique(s.semantic)) <= set(range(len(CATEGORIES) + 1))


def test_masks_class_map_instances_and_boxes_agree() -> None:
    for s in scenes():
        assert 1 <= len(s.objects) <= 4
        assert s.instances.max() == len(s.objects)
        union = np.zeros_like(s.semantic, dtype=bool)
        for i, obj in enumerate(s.objects, start=1):
            assert obj.mask.dtype == bool and obj.mask.any()
            assert not (union & obj.mask).any()  # masks are disjoint
            union |= obj.mask
            np.testing.assert_array_equal(s.instances == i, obj.mask)
            assert np.all(s.semantic[obj.mask] == obj.category)
            assert 1 <= obj.category <= len(CATEGORIES)
            x, y, w, h = obj.box
            rows, cols = np.nonzero(obj.mask)
            assert (x, y) == (cols.min(), rows.min())
            assert (x + w - 1, y + h - 1) == (cols.max(), rows.max())
            assert obj.depth == pytest.approx(float(s.depth[obj.mask].min()))
        np.testing.assert_array_equal(union, s.semantic > 0)


def test_occlusion_nearer_object_wins() -> None:
    """Each visible object pixel is nearer than the floor there (z-buffer)."""
    for s in scenes():
        floor = s.semantic == 0
        if floor.any() and (~floor).any():
            # the floor normal is one constant vector; object pixels never carry a floor depth
            # deeper than the floor would have at that row
            floor_normal = s.normals[:, floor][:, 0]
            np.testing.assert_allclose(
                s.normals[:, floor], np.repeat(floor_normal[:, None], floor.sum(), 1), atol=1e-6
            )
            for row in np.flatnonzero((~floor).any(axis=1)):
                on_floor = floor[row]
                if on_floor.any():
                    floor_depth = s.depth[row, on_floor].min()
                    assert np.all(s.depth[row, ~on_floor] <= floor_depth + 1e-4)


def test_floor_is_a_plane_with_geometric_depth() -> None:
    """On the floor 1/z is an affine function of the row (plane through a pinhole camera)
    and constant along a row; its normal points up the image and towards the viewer."""
    s = make_scene(np.random.default_rng(3), height=48, width=48, max_objects=0)
    assert s.objects == [] and s.semantic.max() == 0
    inv = 1.0 / s.depth.astype(np.float64)
    np.testing.assert_allclose(inv, np.repeat(inv[:, :1], 48, axis=1), rtol=1e-6)
    diffs = np.diff(inv[:, 0])
    np.testing.assert_allclose(diffs, diffs[0], rtol=1e-3)
    assert diffs[0] > 0  # nearer at the bottom of the image
    n = s.normals[:, 0, 0]
    assert n[0] == pytest.approx(0.0) and n[1] < 0 and n[2] > 0


def test_sphere_normals_are_radial() -> None:
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(40):
        s = make_scene(rng, max_objects=1)
        obj = s.objects[0]
        if CATEGORIES[obj.category - 1] != "circle" or obj.mask.sum() < 30:
            continue
        found += 1
        rows, cols = np.nonzero(obj.mask)
        nx, ny, nz = s.normals[:, rows, cols]
        assert np.all(nz >= -1e-6)
        # normals point away from a common centre: nx/ny grow with the column/row
        assert np.corrcoef(cols, nx)[0, 1] > 0.9
        assert np.corrcoef(rows, ny)[0, 1] > 0.9
        # the rim is deeper than the pole facing the camera
        assert s.depth[rows, cols][np.argmax(nz)] < s.depth[rows, cols][np.argmin(nz)]
    assert found >= 3


def test_flat_faces_have_one_normal_and_planar_depth() -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        s = make_scene(rng, max_objects=1)
        obj = s.objects[0]
        if CATEGORIES[obj.category - 1] == "circle" or obj.mask.sum() < 10:
            continue
        rows, cols = np.nonzero(obj.mask)
        n = s.normals[:, rows, cols]
        np.testing.assert_allclose(n, np.repeat(n[:, :1], n.shape[1], 1), atol=1e-6)
        # depth is an affine function of (col, row) on the face
        design = np.stack([cols, rows, np.ones_like(cols)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, s.depth[rows, cols].astype(np.float64), rcond=None)
        np.testing.assert_allclose(design @ coef, s.depth[rows, cols], atol=1e-4)


def test_deterministic_given_the_generator() -> None:
    a = make_scene(np.random.default_rng(7))
    b = make_scene(np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    c = make_scene(np.random.default_rng(8))
    assert not np.array_equal(a.image, c.image)


def test_tight_box_closed_form() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert tight_box(mask) == (3.0, 2.0, 6.0, 3.0)
    with pytest.raises(ValueError, match="empty"):
        tight_box(np.zeros((3, 3), dtype=bool))


@pytest.mark.parametrize(
    ("kw", "option"),
    [({"height": 4}, "height"), ({"width": 0}, "width"), ({"max_objects": -1}, "max_objects")],
)
def test_bad_options_name_the_option(kw: dict[str, int], option: str) -> None:
    with pytest.raises(ConfigError, match=f"make_scene: option '{option}'"):
        make_scene(np.random.default_rng(0), **kw)
