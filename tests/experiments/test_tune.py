"""Weight tuning by k-fold cross-validation: the simplex, option parsing, recovery, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from mtlkit.config import parse_config
from mtlkit.data import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import ConfigError
from mtlkit.experiments.tune import (
    decide_values,
    holdout_advice,
    parse_param_ranges,
    simplex_weights,
)
from mtlkit.tasks import Task, interval


def bottleneck(seed: int = 0, n: int = 160) -> DataBundle:
    """Two regressions through a width-1 shared layer: 'main' reads x0, 'loud' reads 1.5·x1.

    One unit cannot serve both; equal weights let the loud task take it, so the main task
    is served well only when its weight dominates."""
    g = torch.Generator().manual_seed(seed)

    def split(name: str) -> TensorSplit:
        x = torch.randn(n, 4, generator=g)
        return TensorSplit(x, {"main": x[:, :1].clone(), "loud": 1.5 * x[:, 1:2]}, name)

    tasks = [Task("main", "regression", 1, metrics=["rmse"]), Task("loud", "regression", 1)]
    return DataBundle(
        "bottleneck",
        split("train"),
        split("val"),
        split("test"),
        tasks,
        ("mlp", {"in_features": 4, "hidden": [1], "activation": "tanh"}),
    )


if "tune_bottleneck" not in DATASETS:
    DATASETS.register("tune_bottleneck", bottleneck)


def config(**extra) -> dict:
    return {
        "name": "bottleneck",
        "data": {"name": "tune_bottleneck", "batch_size": 60},
        "tasks": [{"name": "main"}, {"name": "loud", "auxiliary": True}],
        "optimizer": {"name": "adam", "params": {"lr": 0.05}},
        "train": {"epochs": 10, "monitor": "main/rmse", "log_every": 1000},
        **extra,
    }


def test_simplex_weights_sum_to_t_and_equal_u_gives_equal_weights() -> None:
    w = simplex_weights({"a": 0.2, "b": 0.7, "c": 0.5})
    assert sum(w.values()) == pytest.approx(3.0)
    assert all(v > 0 for v in w.values())
    assert simplex_weights({"a": math.exp(-1), "b": math.exp(-1)}) == pytest.approx(
        {"a": 1.0, "b": 1.0}
    )
    # uniform u → the normalised weights have the Dirichlet(1,1,1) mean 1/3 each
    rng = np.random.default_rng(0)
    draws = [
        list(simplex_weights(dict(zip("abc", rng.uniform(size=3), strict=True))).values())
        for _ in range(4000)
    ]
    assert np.mean(draws, axis=0) / 3 == pytest.approx([1 / 3] * 3, abs=0.02)


def test_param_ranges_parse_and_reject_bad_specs() -> None:
    assert parse_param_ranges(["c=0.1:0.9", "lr=1e-4:1e-1:log"]) == {
        "c": (0.1, 0.9, False),
        "lr": (1e-4, 1e-1, True),
    }
    for bad in ["c", "c=1", "c=0.9:0.1", "c=0:1:log", "c=a:b", "c=0:1:cube"]:
        with pytest.raises(ConfigError, match="tune: option 'param'"):
            parse_param_ranges([bad])


def test_tuning_recovers_the_better_weights_and_resumes(tmp_path) -> None:
    pytest.importorskip("optuna")
    from mtlkit.experiments.tune import run_tune

    cfg = parse_config(config())
    result = run_tune(cfg, tmp_path, trials=6, folds=2)
    history = result["history"]
    equal = history[0]
    assert equal["weights"] == pytest.approx({"main": 1.0, "loud": 1.0})
    w = result["weights"]
    assert (
        w["main"] / (w["main"] + w["loud"]) > 0.6
    )  # the main task must own the unit (switch at 1.5² : 1)
    assert result["best_delta_m"] > equal["value"] + 5.0
    tuned = yaml.safe_load((tmp_path / "tuned.yaml").read_text())
    assert tuned["weighting"] == {"name": "static", "params": {"weights": w}}
    parse_config(tuned)  # ready to train
    assert (tmp_path / "study.db").is_file()
    # resuming: the finished trials are kept, only the missing ones run
    more = run_tune(cfg, tmp_path, trials=7, folds=2)
    assert more["trials"] == 7
    assert [h["value"] for h in more["history"][:6]] == [h["value"] for h in history]
    # the held-out check reuses its finished runs and trains the new best trial's own
    assert more["holdout"]["stl"] == result["holdout"]["stl"]
    assert more["holdout"]["advice"]


def test_bad_tuning_input_is_a_config_error(tmp_path) -> None:
    pytest.importorskip("optuna")
    from mtlkit.experiments.tune import run_tune

    cfg = parse_config(config())
    with pytest.raises(ConfigError, match="'folds' must be ≥ 2"):
        run_tune(cfg, tmp_path, trials=1, folds=1)
    with pytest.raises(ConfigError, match="'trials' must be ≥ 1"):
        run_tune(cfg, tmp_path, trials=0, folds=2)
    uw = parse_config(config(weighting={"name": "uw"}))
    with pytest.raises(ConfigError, match="nothing to search"):
        run_tune(uw, tmp_path, trials=1, folds=2)
    with pytest.raises(ConfigError, match="unknown option"):
        run_tune(uw, tmp_path, trials=1, folds=2, params={"nosuch": (0.0, 1.0, False)})


# ---------------------------------------------------------------------------- held-out check


def test_interval_is_the_student_t_interval() -> None:
    s = interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, t(0.975, 2) = 4.3027: half-width 4.3027 / √3
    assert s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0)
    assert s["ci"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)])
    one = interval([0.5])
    assert one["std"] is None and one["ci"] is None  # never "± 0" from one seed
    assert decide_values([1.0, 1.2, 0.9]) == "better"
    assert decide_values([-1.0, -1.2, -0.9]) == "worse"
    assert decide_values([1.0, -1.0, 0.2]) == "no detectable difference"
    assert decide_values([3.0]) == "undecided"


def test_advice_says_use_single_task_models_when_every_candidate_loses() -> None:
    advice = holdout_advice([-5.0, -6.0, -5.5], [-3.0, -4.0, -3.2], cv_best=-2.0)
    assert advice.startswith("Use single-task models")
    assert "Every trial also lost in cross-validation" in advice
    one = holdout_advice([-1.0], [-0.5])
    assert one.startswith("Use single-task models") and "One seed gives no interval" in one
    # below 0 on every seed, but the intervals reach 0: a lean, not a verdict
    lean = holdout_advice([-1.0, -90.0], [-2.0, -80.0])
    assert lean.startswith("Lean towards single-task models")
    # one candidate that does not lose is enough to not say it
    assert not holdout_advice([-1.0, -1.2], [0.5, 3.0]).startswith("Use single-task")


def test_advice_says_when_tuning_is_no_better_than_equal_weights() -> None:
    # tuned − equal: +1, −0.5, +0.2: the interval holds 0
    advice = holdout_advice([2.0, 0.5, 1.2], [1.0, 1.0, 1.0])
    assert "no better than equal weights" in advice and "keep equal weights" in advice
    # tuned clearly ahead on every seed
    better = holdout_advice([3.0, 3.1, 2.9], [1.0, 1.1, 0.9])
    assert better.startswith("The tuned weights beat equal weights")
    # one seed ahead: not called a win
    ahead = holdout_advice([2.0], [1.0])
    assert "cannot tell them from noise" in ahead
    assert "kept equal weights" in holdout_advice([1.0], [1.0], tuned_is_ew=True)
    kept = holdout_advice([-1.0, -2.0], [-1.0, -2.0], tuned_is_ew=True)
    assert kept.startswith("Lean towards single-task models: equal weights, which the search")
    with pytest.raises(ConfigError, match="one value per seed"):
        holdout_advice([1.0, 2.0], [1.0])


def test_held_out_check_advises_single_task_models_when_they_win_by_construction(
    tmp_path,
) -> None:
    """Both tasks main, one shared tanh unit: an MTL model serves one task at most, while each
    single-task model has its own unit, so every weighting loses to STL on held-out data."""
    pytest.importorskip("optuna")
    from mtlkit.experiments.tune import run_tune

    cfg = parse_config(config(tasks=[{"name": "main"}, {"name": "loud"}]))
    result = run_tune(cfg, tmp_path, trials=2, folds=2, holdout_seeds=1)
    hold = result["holdout"]
    assert hold["split"] == "test" and hold["seeds"] == [cfg.seed]
    assert set(hold["stl"]) == {"main", "loud"} and set(hold["tuned"]) == {"main", "loud"}
    assert all(v < 0 for v in hold["delta_m"]["tuned"]["values"])
    assert all(v < 0 for v in hold["delta_m"]["ew"]["values"])
    assert hold["advice"].startswith("Use single-task models")
    first = result["history"][0]["fold_delta_m"]
    gain = [a - b for a, b in zip(result["fold_delta_m"], first, strict=True)]
    assert result["cv_vs_equal"]["values"] == pytest.approx(gain)
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["holdout"]["advice"] == hold["advice"]


def test_the_printed_summary_carries_the_advice_and_the_intervals() -> None:
    from rich.console import Console

    from mtlkit.experiments.tune import print_tune

    tuned, ew = [-5.0, -6.0, -5.5], [-3.0, -4.0, -3.2]
    result = {
        "weights": {"a": 1.5, "b": 0.5},
        "params": {},
        "folds": 2,
        "best_delta_m": -2.0,
        "cv_vs_equal": {**interval([1.0, 2.0]), "values": [1.0, 2.0]},
        "holdout": {
            "seeds": [0, 1, 2],
            "delta_m": {"tuned": {"values": tuned}, "ew": {"values": ew}},
            "decision": {"tuned": decide_values(tuned), "ew": decide_values(ew)},
            "advice": holdout_advice(tuned, ew),
        },
    }
    console = Console(record=True, width=200)
    print_tune(result, console)
    text = console.export_text()
    assert "Advice: Use single-task models" in text
    assert "t over 3 seeds" in text and "worse" in text
    assert "optimistic" in text
