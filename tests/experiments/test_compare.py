"""MTL vs STL comparison: Δm ± std by hand, resume by reuse, grouping checks, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from rich.console import Console

from mtlkit.config import parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.compare import run_compare, summarise, to_markdown
from mtlkit.experiments.group import run_group

from ..conftest import small_digits_config


def tiny_config(**data: int) -> dict:
    raw = small_digits_config(epochs=1)
    raw["data"]["params"] = {"n_train": 96, "n_val": 32, "n_test": 32, **data}
    raw["data"]["batch_size"] = 48
    raw["model"]["encoder"]["params"] = {"channels": [4, 4], "out_features": 8}
    return raw


def test_delta_m_mean_and_std_by_hand() -> None:
    stl = {
        0: {"a": {"accuracy": 0.5}, "b": {"mae": 2.0}},
        1: {"a": {"accuracy": 0.4}, "b": {"mae": 1.0}},
    }
    mtl = {
        0: {"a": {"accuracy": 0.55}, "b": {"mae": 1.8}},
        1: {"a": {"accuracy": 0.42}, "b": {"mae": 1.1}},
    }
    out = summarise(stl, {"uw@hps": mtl})["variants"]["uw@hps"]
    # seed 0: a +10 %, b +10 % (lower is better) → Δm 10; seed 1: a +5 %, b −10 % → −2.5
    assert out["delta_m"]["values"] == pytest.approx([10.0, -2.5])
    assert out["delta_m"]["mean"] == pytest.approx(3.75)
    assert out["delta_m"]["std"] == pytest.approx(np.std([10.0, -2.5], ddof=1))
    assert out["delta_m_per_task"]["a"]["mean"] == pytest.approx(7.5)
    assert out["delta_m_per_task"]["b"]["mean"] == pytest.approx(0.0)
    assert out["metrics"]["a"]["accuracy"]["mean"] == pytest.approx(0.485)
    assert re.fullmatch(
        r"MTL \(uw@hps\) beats STL on 1 of 2 tasks; Δm = \+3\.[78] ± 8\.8 %", out["verdict"]
    )


def test_comparison_runs_resumes_and_writes_tables(tmp_path) -> None:
    config = parse_config(tiny_config())
    console = Console(record=True, width=200)
    summary = run_compare(config, tmp_path, methods=["ew"], seeds=2, console=console)
    assert summary["seeds"] == [0, 1]
    variant = summary["variants"]["ew@hps"]
    assert len(variant["delta_m"]["values"]) == 2
    per_seed = summary["per_seed"]
    for s, dm in zip([0, 1], variant["delta_m"]["values"], strict=True):
        mtl = per_seed["variants"]["ew@hps"][s]
        base = per_seed["stl"][s]
        terms = [(mtl[t][m] - base[t][m]) / base[t][m] for t in base for m in base[t]]
        assert dm == pytest.approx(100 * np.mean(terms))
    for name in ("compare.json", "compare.csv", "compare.md"):
        assert (tmp_path / name).is_file()
    assert "beats STL on" in (tmp_path / "compare.md").read_text()
    assert json.loads((tmp_path / "compare.json").read_text())["seeds"] == [0, 1]
    # re-running reuses every finished run and gives the same numbers
    again = Console(record=True, width=200)
    second = run_compare(config, tmp_path, methods=["ew"], seeds=2, console=again)
    assert "training" not in again.export_text()
    assert second["variants"]["ew@hps"]["delta_m"] == variant["delta_m"]
    # the same folder with other data: not comparable
    other = parse_config(tiny_config(n_train=80))
    with pytest.raises(ConfigError, match="trained on different data"):
        run_compare(other, tmp_path, methods=["ew"], seeds=1, console=again)


def test_unknown_method_and_architecture_are_config_errors(tmp_path) -> None:
    config = parse_config(tiny_config())
    with pytest.raises(ConfigError, match=r"unknown method 'nosuch'; available: .*pcgrad"):
        run_compare(config, tmp_path, methods=["ew", "nosuch"], seeds=1)
    with pytest.raises(ConfigError, match="unknown architecture 'tower'"):
        run_compare(config, tmp_path, methods=["ew"], architectures=["tower"], seeds=1)
    with pytest.raises(ConfigError, match="'seeds' must be ≥ 1"):
        run_compare(config, tmp_path, methods=["ew"], seeds=0)
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_group_checks_k_and_the_affinity_file(tmp_path) -> None:
    config = parse_config(tiny_config())
    good = {"tasks": ["right", "left"], "cosine": [[1, 0.2], [0.2, 1]], "steps": 1}
    good |= {"conflict": [[0, 0], [0, 0]], "tag": [[0.1, 0.3], [0.05, 0.2]]}
    path = tmp_path / "affinity.json"
    path.write_text(json.dumps(good))
    with pytest.raises(
        ConfigError, match=r"'models' \(k\) must be between 1 and the number of tasks \(2"
    ):
        run_group(config, tmp_path / "g", 3, path)
    result = run_group(config, tmp_path / "g", 1, path)
    assert result["grouping"]["groups"] == [["left", "right"]]
    # task order of the file is mapped onto the config's: Z(right→left) = 0.3, in % (the
    # file has no version: its lookahead is a fraction)
    assert result["grouping"]["scores"]["left"] == pytest.approx(30.0)
    other = dict(good, tasks=["left", "depth"])
    path.write_text(json.dumps(other))
    with pytest.raises(
        ConfigError, match="is for tasks left, depth, but the config's tasks are left, right"
    ):
        run_group(config, tmp_path / "g", 1, path)


def test_markdown_lists_every_row() -> None:
    stl = {0: {"a": {"accuracy": 0.5}}}
    md = to_markdown(summarise(stl, {"ew@hps": {0: {"a": {"accuracy": 0.6}}}}) | {"seeds": [0]})
    assert "| STL | a | accuracy | 0.5000 ± 0.0000 |" in md
    assert "| ew@hps | a | accuracy | 0.6000 ± 0.0000 | 20.00 ± 0.00 | 20.00 ± 0.00 |" in md


def test_cli_bad_input_exits_2(tmp_path, capsys) -> None:
    import yaml

    from mtlkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    out = str(tmp_path / "out")
    assert main(["compare", str(path), "--methods", "ew,bogus", "--seeds", "1", "--out", out]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    affinity = tmp_path / "a.json"
    zeros = [[0, 0], [0, 0]]
    affinity.write_text(
        json.dumps({"tasks": ["left", "right"], "cosine": zeros, "conflict": zeros, "tag": zeros})
    )
    args = ["group", str(path), "--models", "3", "--affinity", str(affinity), "--out", out]
    assert main(args) == 2
    assert "must be between 1 and the number of tasks" in capsys.readouterr().err
