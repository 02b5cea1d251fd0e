"""examples/vision_mtl.py end to end on a tiny shapes dataset: STL and MTL, printed table, Δm."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from mtlkit.tasks import delta_m

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vision_mtl.py"


def load_example():
    spec = importlib.util.spec_from_file_location("vision_mtl", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_compares_stl_and_mtl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    example = load_example()
    result = example.main(
        [
            "--root",
            str(tmp_path / "shapes"),
            "--n-train",
            "32",
            "--n-val",
            "4",
            "--n-test",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--method",
            "uw",
        ]
    )
    printed = capsys.readouterr().out
    for task, metrics in example.REPORTED.items():
        for m in metrics:
            assert f"{task:<13}{m:<21}" in printed
            for side in ("stl", "mtl"):
                value = result[side][task][m]
                assert math.isnan(value) or 0.0 <= value <= 1.0
    assert "MTL method 'uw'" in printed and "Δm overall" in printed
    base = {
        t: {m: v for m, v in ms.items() if f"{t}/{m}" not in result["left_out"]}
        for t, ms in result["stl"].items()
    }
    assert all(v != 0 for ms in base.values() for v in ms.values())
    base = {t: ms for t, ms in base.items() if ms}
    assert result["delta_m"] == pytest.approx(delta_m(result["mtl"], base))
    assert (tmp_path / "shapes" / "annotations" / "instances_test.json").is_file()
