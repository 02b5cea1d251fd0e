"""examples/dense_scenes.py: STL and MTL train on the shape scenes and report every metric."""

import importlib.util
import math
from pathlib import Path


def load_example():
    path = Path(__file__).parents[2] / "examples" / "dense_scenes.py"
    spec = importlib.util.spec_from_file_location("dense_scenes_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dense_example_compares_stl_and_mtl(tmp_path: Path) -> None:
    example = load_example()
    results = example.run(
        epochs=1, n_train=16, size=16, out=tmp_path, progress=False, widths=(8, 16)
    )
    assert set(results["stl"]) == {"segmentation", "depth", "normals"}
    test = results["mtl"]["test"]
    assert {"miou", "pixel_accuracy"} <= set(test["segmentation"])
    assert "depth_abs_err" in test["depth"] and "normal_mean_angle" in test["normals"]
    for task, stl in results["stl"].items():
        assert set(stl["test"]) == {task}  # each STL model learns its task alone
    assert math.isfinite(results["delta_m"])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "mtl" / "results.json").is_file()
