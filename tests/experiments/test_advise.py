"""``mtlkit advise``: the budget rule and the recommendation as pure functions, and one small
run end to end (pilot, affinity, grouping, comparison, page), resumed from its folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from mtlkit.cli import main
from mtlkit.config import parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.advise import (
    AFFINITY_EVERY,
    AFFINITY_MIN_MEASURED,
    AFFINITY_MIN_STEPS,
    AFFINITY_STEPS,
    MENU,
    SAFETY,
    Cost,
    Plan,
    plan_budget,
    recommend,
    run_advise,
)
from mtlkit.experiments.compare.runs import DEFAULT_PATIENCE

# ---------------------------------------------------------------------------- the budget rule


def unit_cost(**change: Any) -> Cost:
    """T = 2; every model's epoch is 10 s (10 steps of 1 s, no overhead), so one epoch of
    one seed (2 STL models + 3 methods) is U = 50 s; a measured affinity step is 1 s of
    measurement and its 10 training steps, 11 s."""
    values: dict[str, Any] = {
        "n_tasks": 2,
        "steps_per_epoch": 10,
        "stl_step": 1.0,
        "method_step": {m: 1.0 for m in MENU},
        "epoch_overhead": 0.0,
        "run_seconds": 0.0,
        "affinity_measure": 1.0,
        "pilot_seconds": 0.0,
    }
    values.update(change)
    return Cost(**values)


def test_cost_of_one_seed_is_every_model_once() -> None:
    cost = unit_cost(
        epoch_overhead=2.0, run_seconds=7.0, method_step={"ew": 1.0, "uw": 1.0, "upgrad": 3.0}
    )
    # STL: 2 × (10 + 2); EW, UW: 10 + 2 each; UPGrad: 30 + 2
    assert cost.seed_epoch_seconds(MENU) == pytest.approx(24 + 12 + 12 + 32)
    assert cost.seed_run_seconds(MENU) == pytest.approx(5 * 7.0)
    assert cost.affinity_seconds() == pytest.approx(1.0 + AFFINITY_EVERY * 1.0)
    assert Cost.from_json(json.loads(json.dumps(cost.to_json()))) == cost


def test_without_a_budget_the_plan_is_uncut() -> None:
    plan = plan_budget(unit_cost(pilot_seconds=5.0), max_epochs=10)
    assert (plan.seeds, plan.epochs, plan.affinity_steps, plan.cuts) == (3, 10, AFFINITY_STEPS, [])
    assert plan.patience == DEFAULT_PATIENCE
    assert plan.estimated_seconds == pytest.approx(5 + AFFINITY_STEPS * 11 + 3 * 10 * 50)
    assert plan.full_seconds == plan.estimated_seconds
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@pytest.mark.parametrize(
    ("usable", "seeds", "epochs", "steps"),
    [
        # affinity ⌊0.15 · 2000 / 11⌋ = 27 steps (297 s); R = 1703 ≥ 3 seeds × 5 epochs × 50;
        # epochs ⌊1703 / 150⌋ = 11 → the maximum, 10
        (2000.0, 3, 10, 27),
        # ⌊150 / 11⌋ = 13 steps; R = 857 ≥ 750; epochs ⌊857 / 150⌋ = 5
        (1000.0, 3, 5, 13),
        # ⌊105 / 11⌋ = 9 → the minimum, 10 steps; R = 590: 3 seeds need 750, 2 need 500;
        # epochs ⌊590 / 100⌋ = 5
        (700.0, 2, 5, 10),
        # 10 steps; R = 190: two seeds need 500; one seed, ⌊190 / 50⌋ = 3 epochs
        (300.0, 1, 3, 10),
    ],
)
def test_budget_rule_by_hand(usable: float, seeds: int, epochs: int, steps: int) -> None:
    plan = plan_budget(unit_cost(), max_epochs=10, budget_seconds=usable / SAFETY)
    assert (plan.seeds, plan.epochs, plan.affinity_steps) == (seeds, epochs, steps)
    assert plan.estimated_seconds == pytest.approx(11 * steps + seeds * epochs * 50)
    assert plan.estimated_seconds <= usable
    cuts = " | ".join(plan.cuts)
    assert ("seed(s) instead of 3" in cuts) == (seeds < 3)
    assert ("one seed cannot decide" in cuts) == (seeds == 1)
    assert (f"at most {epochs} of the config's 10 epochs" in cuts) == (epochs < 10)
    assert (f"{steps} of {AFFINITY_STEPS} steps" in cuts) == (steps < AFFINITY_STEPS)


def test_fixed_run_costs_count_once_per_run() -> None:
    # F = 5 runs × 10 s per seed, 10 s for the affinity run. Usable 2000: affinity
    # ⌊(300 − 10) / 11⌋ = 26 steps; R = 2000 − 10 − 286 = 1704 ≥ 3 · (6 · 50 + 50);
    # epochs ⌊(1704 / 3 − 50) / 50⌋ = 10 of 12
    plan = plan_budget(unit_cost(run_seconds=10.0), 12, budget_seconds=2000 / SAFETY)
    assert (plan.seeds, plan.epochs, plan.affinity_steps) == (3, 10, 26)
    assert plan.estimated_seconds == pytest.approx(10 + 286 + 3 * (10 * 50 + 50))


def test_a_budget_below_the_smallest_plan_says_so() -> None:
    plan = plan_budget(unit_cost(), max_epochs=10, budget_seconds=20 / SAFETY)
    assert (plan.seeds, plan.epochs, plan.affinity_steps) == (1, 1, AFFINITY_MIN_STEPS)
    assert "more than the budget" in plan.cuts[-1]


def test_the_pilot_counts_against_the_budget() -> None:
    free = plan_budget(unit_cost(), 10, budget_seconds=1020 / SAFETY)
    paid = plan_budget(unit_cost(pilot_seconds=400.0), 10, budget_seconds=1020 / SAFETY)
    assert (free.seeds, free.epochs) == (3, 5)
    assert (paid.seeds, paid.epochs) == (2, 5)


def test_more_budget_never_plans_less() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        cost = unit_cost(
            n_tasks=int(rng.integers(2, 6)),
            steps_per_epoch=int(rng.integers(1, 200)),
            stl_step=float(rng.uniform(0.001, 0.2)),
            method_step={m: float(rng.uniform(0.001, 0.5)) for m in MENU},
            epoch_overhead=float(rng.uniform(0, 5)),
            run_seconds=float(rng.uniform(0, 10)),
            affinity_measure=float(rng.uniform(0.001, 1.0)),
            pilot_seconds=float(rng.uniform(0, 20)),
        )
        max_epochs = int(rng.integers(1, 30))
        previous = None
        for minutes in np.geomspace(0.1, 600, 25):
            plan = plan_budget(cost, max_epochs, budget_seconds=60 * minutes)
            assert 1 <= plan.seeds <= 3 and 1 <= plan.epochs <= max_epochs
            fits = plan.estimated_seconds <= SAFETY * 60 * minutes + 1e-6
            assert fits or "more than the budget" in plan.cuts[-1]
            if previous is not None:
                assert plan.affinity_steps >= previous.affinity_steps
                assert plan.seeds >= previous.seeds
                if plan.seeds == previous.seeds:
                    assert plan.epochs >= previous.epochs
            previous = plan
        assert previous is not None
        if previous.estimated_seconds < previous.full_seconds:
            assert previous.cuts  # a cut plan always says what was cut


def test_patience_is_the_protocols() -> None:
    assert plan_budget(unit_cost(), 10, patience=4).patience == 4
    assert plan_budget(unit_cost(), 10, budget_seconds=300 / SAFETY).patience == DEFAULT_PATIENCE


def test_bad_plan_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="option 'budget' must be > 0"):
        plan_budget(unit_cost(), 10, budget_seconds=0)
    with pytest.raises(ConfigError, match="maximum epochs must be ≥ 1"):
        plan_budget(unit_cost(), 0)
    with pytest.raises(ConfigError, match="option 'seeds' must be ≥ 1"):
        plan_budget(unit_cost(), 10, seeds=0)


# ---------------------------------------------------------------------------- recommendation


def variant(
    decision: str,
    mean: float,
    ci: tuple[float, float] | None,
    tasks: dict[str, str] | None = None,
    not_converged: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "delta_m": {"mean": mean, "std": None, "ci": list(ci) if ci else None, "n": 3},
        "decision": decision,
        "task_decisions": tasks or {"a": decision, "b": decision, "c": decision},
        "not_converged": not_converged or [],
    }


def summary(
    variants: dict[str, dict[str, Any]],
    efficiency: dict[str, dict[str, float]] | None = None,
    seeds: int = 3,
) -> dict[str, Any]:
    stat = {"mean": 0.9, "std": 0.01, "n": seeds}
    eff = {"stl": {"params": 3000, "train_seconds": 30.0, "latency_ms": 3.0}}
    for label in variants:
        eff[label] = {"params": 1200, "train_seconds": 12.0, "latency_ms": 1.0}
    eff.update(efficiency or {})
    return {
        "seeds": list(range(seeds)),
        "stl": {t: {"accuracy": stat} for t in ("a", "b", "c")},
        "variants": variants,
        "efficiency": eff,
    }


def test_better_picks_the_highest_lower_bound() -> None:
    rec = recommend(
        summary(
            {
                "ew@hps": variant("better", 3.0, (0.5, 5.5)),
                "uw@hps": variant("better", 2.5, (1.0, 4.0)),
                "upgrad@hps": variant("no detectable difference", 4.0, (-1.0, 9.0)),
            }
        )
    )
    assert (rec["choice"], rec["method"], rec["confidence"]) == ("mtl", "uw", "decided")
    assert rec["models"] == [["a", "b", "c"]]
    assert "+2.50 % (95 % CI +1.00 … +4.00)" in rec["headline"]
    assert rec["cost"] == {
        "model": "uw@hps",
        "params": 1200,
        "train_seconds": 12.0,
        "latency_ms": 1.0,
    }
    assert any("ew@hps" in r for r in rec["reasons"])


def test_equal_lower_bounds_go_to_the_cheaper_method() -> None:
    rec = recommend(
        summary(
            {
                "ew@hps": variant("better", 2.0, (1.0, 3.0)),
                "upgrad@hps": variant("better", 2.0, (1.0, 3.0)),
            },
            {"upgrad@hps": {"params": 1200, "train_seconds": 40.0}},
        )
    )
    assert rec["method"] == "ew"


def test_a_task_decided_worse_is_named() -> None:
    tasks = {"a": "better", "b": "no detectable difference", "c": "worse"}
    rec = recommend(summary({"ew@hps": variant("better", 2.0, (0.2, 3.8), tasks)}))
    assert rec["choice"] == "mtl"
    assert any("task(s) c are worse" in c for c in rec["caveats"])


def test_every_method_worse_means_single_task_models() -> None:
    rec = recommend(
        summary(
            {
                "ew@hps": variant("worse", -3.0, (-5.0, -1.0)),
                "uw@hps": variant("worse", -2.0, (-3.0, -1.0)),
            }
        )
    )
    assert (rec["choice"], rec["method"], rec["confidence"]) == ("stl", None, "decided")
    assert rec["models"] == [["a"], ["b"], ["c"]]
    assert rec["cost"]["model"] == "stl" and rec["cost"]["params"] == 3000


def test_no_detectable_difference_is_decided_on_cost() -> None:
    variants = {
        "ew@hps": variant("no detectable difference", 0.4, (-1.0, 1.8)),
        "uw@hps": variant("no detectable difference", 0.9, (-2.0, 3.8)),
        "upgrad@hps": variant("worse", -2.0, (-3.0, -1.0)),
    }
    rec = recommend(summary(variants, {"uw@hps": {"params": 1100, "train_seconds": 20.0}}))
    assert (rec["choice"], rec["method"], rec["confidence"]) == ("mtl", "uw", "cost only")
    assert not rec["caveats"]
    assert "No detectable difference" in rec["headline"]
    assert "37 % of the parameters" in rec["headline"]  # 1100 / 3000
    assert any("upgrad@hps is worse" in r for r in rec["reasons"])
    variants["uw@hps"]["task_decisions"]["b"] = "worse"
    rec = recommend(summary(variants, {"uw@hps": {"params": 1100, "train_seconds": 20.0}}))
    assert rec["caveats"] == [
        "task(s) b are worse in this model than alone: if they matter most, serve them with "
        "their own model(s)"
    ]
    # one multi-task model that is not smaller than the T single-task models: keep those
    rec = recommend(summary(variants, {v: {"params": 5000} for v in variants}))
    assert (rec["choice"], rec["confidence"]) == ("stl", "cost only")


def test_one_seed_cannot_decide() -> None:
    variants = {
        "ew@hps": variant("undecided", 1.0, None),
        "uw@hps": variant("undecided", 2.0, None),
    }
    rec = recommend(summary(variants, seeds=1))
    assert (rec["choice"], rec["method"], rec["confidence"]) == ("undecided", None, "none")
    assert "one seed" in rec["headline"] and "uw@hps" in rec["headline"]


def test_unconverged_runs_are_caveats_and_make_their_verdict_provisional() -> None:
    text = "{} seed 0 (best epoch 3 of 3 run, budget 3)"
    others = variant("better", 1.0, (0.2, 1.8), not_converged=[text.format("uw@hps")])
    mine = variant("better", 2.0, (0.5, 3.5), not_converged=[text.format("ew@hps")])
    rec = recommend(summary({"ew@hps": variant("better", 2.0, (0.5, 3.5)), "uw@hps": others}))
    assert (rec["method"], rec["confidence"]) == ("ew", "decided")
    assert any("not converged: 1 run " in c and "uw@hps seed 0" in c for c in rec["caveats"])
    rec = recommend(summary({"ew@hps": mine, "uw@hps": others}))
    assert (rec["method"], rec["confidence"]) == ("ew", "provisional")
    assert any("not converged: 2 runs" in c for c in rec["caveats"])


def test_single_task_advice_on_unconverged_baselines_is_provisional() -> None:
    flag = ["STL a seed 0 (best epoch 15 of 15 run, budget 15)"]
    rec = recommend(summary({"ew@hps": variant("worse", -3.0, (-5.0, -1.0), not_converged=flag)}))
    assert (rec["choice"], rec["confidence"]) == ("stl", "provisional")
    assert any("STL a seed 0" in c for c in rec["caveats"])


def test_grouping_is_suggested_only_when_robust() -> None:
    base = summary({"ew@hps": variant("no detectable difference", 0.1, (-1.0, 1.2))})
    robust = {"groups": [["a", "b"], ["c"]], "frequency": 0.9, "agrees": True}
    rec = recommend(base, robust)
    assert any("two models (a, b | c), robust in 90 %" in r for r in rec["reasons"])
    assert not rec["caveats"]
    shaky = {**robust, "frequency": 0.55, "agrees": False}
    rec = recommend(base, shaky)
    assert any("is not robust (55 % of resamples)" in r for r in rec["reasons"])
    assert any("cosine and lookahead measures give different" in c for c in rec["caveats"])
    overlapping = {**robust, "groups": [["a", "b", "c"], ["b", "c"]], "serves": [["a"], ["b", "c"]]}
    rec = recommend(base, overlapping)
    assert any("(a, b, c (serving a) | b, c)" in r for r in rec["reasons"])
    unknown = {**robust, "frequency": None}
    assert any("unknown of resamples" in r for r in recommend(base, unknown)["reasons"])


def test_a_summary_without_variants_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no multi-task variant"):
        recommend({"stl": {}, "variants": {}})


# ---------------------------------------------------------------------------- end to end


def tiny_table(folder: Path) -> dict[str, Any]:
    """Three tasks on a 240-row table (two regressions, one binary), a tiny MLP."""
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 240))
    noise = 0.1 * rng.normal(size=(2, 240))
    rows = ["a,b,c,s,d,up"] + [
        f"{a[i]:.3f},{b[i]:.3f},{c[i]:.3f},{a[i] + b[i] + noise[0, i]:.3f},"
        f"{a[i] - c[i] + noise[1, i]:.3f},{int(a[i] + 0.5 * b[i] > 0)}"
        for i in range(240)
    ]
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    return {
        "name": "tiny-table",
        "data": {
            "name": "tabular",
            "batch_size": 32,
            "params": {
                "path": str(folder / "t.csv"),
                "tasks": {"s": "regression", "d": "regression", "up": "binary"},
                "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},
                "hidden": [8],
            },
        },
        "train": {"epochs": 2},
    }


def test_advise_end_to_end_and_resumed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tiny_table(tmp_path)
    config = parse_config(raw)
    out = tmp_path / "advice"
    console = Console(record=True, width=200)
    advice = run_advise(config, out, budget_minutes=0.25, console=console)
    for name in (
        "plan.json",
        "advise.json",
        "advise.html",
        "affinity/affinity.json",
        "group/group.json",
        "compare/compare.json",
    ):
        assert (out / name).is_file(), name
    # the plan is the budget rule applied to the measured pilot
    plan, cost = advice["plan"], Cost.from_json(advice["cost"])
    assert plan == plan_budget(cost, 2, budget_seconds=15.0).to_json()
    assert advice["summary"]["seeds"] == list(range(plan["seeds"]))
    measured = json.loads((out / "affinity" / "affinity.json").read_text())
    # at most the planned steps; fewer only when the precision rule stopped it
    assert min(AFFINITY_MIN_MEASURED, plan["affinity_steps"]) <= measured["steps"]
    assert measured["steps"] <= plan["affinity_steps"]
    assert measured["steps"] == plan["affinity_steps"] or measured["stop"] == "precise"
    assert advice["grouping"]["k"] == 2
    assert sorted(t for g in advice["grouping"]["groups"] for t in g) == ["d", "s", "up"]
    rec = advice["recommendation"]
    assert rec["choice"] in ("mtl", "stl", "undecided")
    assert rec["confidence"] in ("decided", "provisional", "cost only", "none")
    page = (out / "advise.html").read_text()
    for section in ("recommendation", "plan", "affinity", "verdict", "comparison"):
        assert f'<section id="{section}">' in page
    assert math.isfinite(advice["seconds"]["total"])
    # the command on the same folder: the plan, the affinity and every run are reused
    finished = {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("results.json")}
    assert len(finished) == plan["seeds"] * (3 + len(MENU))
    (tmp_path / "c.yaml").write_text(json.dumps(raw))
    capsys.readouterr()
    code = main(["advise", str(tmp_path / "c.yaml"), "--budget", "0.25", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "resuming the plan" in printed and "measuring the task affinity" not in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("results.json")} == finished
    assert "Recommendation" in printed and "Verdict against the 3 single-task models" in printed
    second = json.loads((out / "advise.json").read_text())
    for key in ("choice", "method", "models", "confidence"):
        assert second["recommendation"][key] == rec[key]
    # another budget on the same folder would mix plans; a missing config is exit code 2
    with pytest.raises(ConfigError, match="was planned with"):
        run_advise(config, out, budget_minutes=5, console=console)
    assert main(["advise", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2


@pytest.mark.parametrize(
    ("option", "match"), [({"budget_minutes": 0}, "'budget' must be > 0"), ({"seeds": 0}, "≥ 1")]
)
def test_bad_options_fail_before_any_work(tmp_path: Path, option: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_advise(parse_config(tiny_table(tmp_path)), tmp_path / "o", console=Console(), **option)
    assert not (tmp_path / "o").exists()
