"""``group`` end to end from an affinity file: robustness, the other measure, old files."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from mtlkit.config import parse_config
from mtlkit.data import DATASETS, DataBundle, TensorSplit
from mtlkit.experiments.group import measure_advice, print_grouping, run_group
from mtlkit.tasks import Task


def pair(seed: int = 0, n: int = 32) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def split(name: str) -> TensorSplit:
        x = torch.randn(n, 3, generator=g)
        return TensorSplit(x, {"a": x[:, :1].clone(), "b": x[:, 1:2].clone()}, name)

    tasks = [Task("a", "regression", 1), Task("b", "regression", 1)]
    return DataBundle(
        "pair", split("train"), split("val"), split("test"), tasks, ("mlp", {"in_features": 3})
    )


if "group_pair" not in DATASETS:
    DATASETS.register("group_pair", pair)


def affinity_file(path, history: bool = True) -> None:
    """The lookahead says a and b help each other (+5 %), the cosine that they conflict."""
    tag = [[2.0, 5.0], [5.0, 2.0]]
    cos = [[1.0, -0.5], [-0.5, 1.0]]
    data = {
        "version": 2,
        "tasks": ["a", "b"],
        "cosine": cos,
        "conflict": [[0.0, 1.0], [1.0, 0.0]],
        "tag": tag,
        "steps": 10,
        "history": [{"step": 10 * s, "cosine": cos, "tag": tag} for s in range(10)]
        if history
        else [],
    }
    path.write_text(json.dumps(data))


def test_group_reports_robustness_and_a_disagreeing_measure(tmp_path) -> None:
    cfg = parse_config({"name": "pair", "data": {"name": "group_pair"}})
    affinity_file(tmp_path / "affinity.json")
    result = run_group(cfg, tmp_path / "out", 2, tmp_path / "affinity.json", resamples=20)
    assert result["grouping"]["groups"] == [["a", "b"]]
    assert result["grouping"]["search"] == "exhaustive search"
    assert result["robustness"]["frequency"] == 1.0  # noiseless steps: every resample agrees
    assert result["robustness"]["pair_together"] == [[1.0, 1.0], [1.0, 1.0]]
    assert result["score_stderr"] == {"a": 0.0, "b": 0.0}  # identical steps: no spread
    other = result["other_measure"]
    assert other["measure"] == "cosine" and not other["agrees"]
    assert sorted(other["grouping"]["groups"]) == [["a"], ["b"]]
    console = Console(record=True, width=200)
    print_grouping(result, 2, console)
    text = console.export_text()
    assert "exhaustive search" in text and "exact" not in text
    assert "gradient cosine measure picks a different grouping" in text
    assert "100 % of 20 bootstrap resamples" in text
    assert result["measure_advice"].startswith("The measures disagree; believe the lookahead")
    saved = json.loads((tmp_path / "out" / "group.json").read_text())
    assert saved["robustness"]["frequency"] == 1.0


def test_an_old_affinity_file_without_history_groups_but_says_robustness_is_unknown(
    tmp_path,
) -> None:
    cfg = parse_config({"name": "pair", "data": {"name": "group_pair"}})
    affinity_file(tmp_path / "affinity.json", history=False)
    result = run_group(cfg, tmp_path / "out", 1, tmp_path / "affinity.json")
    assert result["robustness"] is None
    assert result["robustness_note"].startswith("unknown")
    assert result["grouping"]["groups"] == [["a", "b"]]
    with pytest.raises(Exception, match="'measure' must be 'tag' or 'cosine'"):
        run_group(cfg, tmp_path / "out", 1, tmp_path / "affinity.json", measure="conflict")


def test_measure_advice_follows_the_documented_rule() -> None:
    assert measure_advice(0.9, 0.2, False).startswith("The measures disagree; believe the look")
    assert "lean on the gradient cosine" in measure_advice(0.4, 0.95, False)
    assert "neither grouping is robust" in measure_advice(0.4, 0.5, False)
    assert "neither grouping is robust" in measure_advice(None, None, False)
    assert "it is robust" in measure_advice(0.95, 0.9, True)
    assert "neither is robust" in measure_advice(0.3, 0.3, True)
