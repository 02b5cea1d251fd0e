"""MTL vs STL comparison: Δm, t-intervals and decisions by hand, one seed, convergence flags,
the primary metric, resume by reuse, efficiency, grouping checks, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from mtlkit.config import parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.compare import (
    decide,
    interval,
    protocol_config,
    rows,
    run_compare,
    summarise,
    to_markdown,
)
from mtlkit.experiments.group import run_group

from ..conftest import small_digits_config


def tiny_config(**data: int) -> dict:
    raw = small_digits_config(epochs=1)
    raw["data"]["params"] = {"n_train": 96, "n_val": 32, "n_test": 32, **data}
    raw["data"]["batch_size"] = 48
    raw["model"]["encoder"]["params"] = {"channels": [4, 4], "out_features": 8}
    return raw


def test_delta_m_mean_std_and_interval_by_hand() -> None:
    stl = {
        0: {"a": {"accuracy": 0.5}, "b": {"mae": 2.0}},
        1: {"a": {"accuracy": 0.4}, "b": {"mae": 1.0}},
    }
    mtl = {
        0: {"a": {"accuracy": 0.55}, "b": {"mae": 1.8}},
        1: {"a": {"accuracy": 0.42}, "b": {"mae": 1.1}},
    }
    summary = summarise(stl, {"uw@hps": mtl})
    out = summary["variants"]["uw@hps"]
    # seed 0: a +10 %, b +10 % (lower is better) → Δm 10; seed 1: a +5 %, b −10 % → −2.5
    assert out["delta_m"]["values"] == pytest.approx([10.0, -2.5])
    assert out["delta_m"]["mean"] == pytest.approx(3.75)
    std = np.std([10.0, -2.5], ddof=1)  # 8.8388
    assert out["delta_m"]["std"] == pytest.approx(std)
    # t_{1, 0.975} = 12.7062 (t table): half-width 12.7062 · std / √2
    half = 12.7062 * std / np.sqrt(2)
    assert out["delta_m"]["ci"] == pytest.approx([3.75 - half, 3.75 + half], abs=1e-3)
    assert out["delta_m"]["n"] == 2
    assert out["decision"] == "no detectable difference"
    assert out["delta_m_per_task"]["a"]["mean"] == pytest.approx(7.5)
    assert out["delta_m_per_task"]["b"]["mean"] == pytest.approx(0.0)
    assert out["metrics"]["a"]["accuracy"]["mean"] == pytest.approx(0.485)
    assert out["metrics"]["a"]["accuracy"]["n"] == 2
    assert summary["interval"] == "t" and summary["primary"] == {"a": "accuracy", "b": "mae"}
    assert "t over 2 seeds, paired by seed" in out["verdict"]
    assert "no detectable difference at this budget" in out["verdict"]
    assert "Not converged" not in out["verdict"]


def test_t_interval_matches_the_t_table() -> None:
    # values 1..4: mean 2.5, s = 1.2910; t_{3, 0.975} = 3.1824 → half-width 2.0543
    r = interval([1.0, 2.0, 3.0, 4.0])
    assert r["mean"] == pytest.approx(2.5)
    assert r["std"] == pytest.approx(np.sqrt(5 / 3))
    assert r["ci"] == pytest.approx([2.5 - 2.0543, 2.5 + 2.0543], abs=1e-3)
    # 10 values: t_{9, 0.975} = 2.2622
    values = [float(v) for v in range(10)]
    r = interval(values)
    half = 2.2622 * np.std(values, ddof=1) / np.sqrt(10)
    assert r["ci"] == pytest.approx([4.5 - half, 4.5 + half], abs=1e-3)
    # the interval is symmetric about the mean and shrinks as seeds agree more
    assert interval([1.0, 1.1, 0.9])["ci"][1] - 1.0 < interval([1.0, 2.0, 0.0])["ci"][1] - 1.0


@pytest.mark.parametrize(
    ("ci", "decision"),
    [
        ([0.5, 2.0], "better"),
        ([1e-6, 2.0], "better"),
        ([0.0, 2.0], "no detectable difference"),  # a bound at 0 does not exclude 0
        ([-1.0, 1.0], "no detectable difference"),
        ([-2.0, 0.0], "no detectable difference"),
        ([-2.0, -1e-6], "worse"),
        (None, "undecided"),
    ],
)
def test_decision_at_the_interval_boundary(ci, decision) -> None:
    assert decide(ci) == decision


def test_decision_follows_the_interval_not_the_sign() -> None:
    stl = {s: {"a": {"accuracy": 0.5}} for s in (0, 1, 2)}

    def variant(accs):
        return {s: {"a": {"accuracy": a}} for s, a in zip((0, 1, 2), accs, strict=True)}

    # Δm +2, +4, +3 %: mean 3, s = 1, t_{2} = 4.3027 → CI [0.516, 5.484] > 0: better
    # Δm +6, −2, +5 %: mean 3 again, but the interval holds 0
    # Δm −2, −4, −3 %: worse
    out = summarise(
        stl,
        {
            "tight": variant([0.51, 0.52, 0.515]),
            "noisy": variant([0.53, 0.49, 0.525]),
            "bad": variant([0.49, 0.48, 0.485]),
        },
    )["variants"]
    half = 4.3027 / np.sqrt(3)
    assert out["tight"]["delta_m"]["ci"] == pytest.approx([3 - half, 3 + half], abs=1e-3)
    assert out["tight"]["decision"] == "better"
    assert out["tight"]["task_decisions"] == {"a": "better"}
    assert out["noisy"]["delta_m"]["mean"] == pytest.approx(3.0)
    assert out["noisy"]["decision"] == "no detectable difference"
    assert out["bad"]["decision"] == "worse"
    assert "worse than STL" in out["bad"]["verdict"]


def test_one_seed_has_no_spread_and_decides_nothing() -> None:
    stl = {0: {"a": {"accuracy": 0.5}}}
    summary = summarise(stl, {"ew@hps": {0: {"a": {"accuracy": 0.6}}}})
    out = summary["variants"]["ew@hps"]
    assert out["delta_m"]["std"] is None and out["delta_m"]["ci"] is None
    assert out["delta_m"]["mean"] == pytest.approx(20.0)
    assert summary["stl"]["a"]["accuracy"] == {"mean": 0.5, "std": None, "n": 1}
    assert out["decision"] == "undecided" and out["task_decisions"] == {"a": "undecided"}
    assert "n/a" in out["verdict"] and "one seed cannot decide" in out["verdict"]
    md = to_markdown(summary)
    assert "± 0" not in md and "±0" not in md
    assert "one seed: spread and interval n/a" in md


def test_delta_m_uses_the_primary_metric_and_keeps_all_metrics_beside() -> None:
    stl = {s: {"a": {"accuracy": 0.5, "macro_f1": 0.5}} for s in (0, 1)}
    mtl = {s: {"a": {"accuracy": 0.55, "macro_f1": 0.4}} for s in (0, 1)}
    out = summarise(stl, {"ew@hps": mtl}, primary={"a": "macro_f1"})["variants"]["ew@hps"]
    assert out["delta_m"]["mean"] == pytest.approx(-20.0)  # macro-F1 only
    assert out["delta_m_all_metrics"]["mean"] == pytest.approx(-5.0)  # (+10 − 20) / 2
    assert set(out["metrics"]["a"]) == {"accuracy", "macro_f1"}  # the full table stays
    with pytest.raises(ConfigError, match="task 'a': primary metric 'mae' is not among"):
        summarise(stl, {"ew@hps": mtl}, primary={"a": "mae"})


def test_a_run_whose_best_epoch_is_its_last_is_flagged() -> None:
    stl = {0: {"a": {"accuracy": 0.5}}, 1: {"a": {"accuracy": 0.5}}}
    mtl = {0: {"a": {"accuracy": 0.6}}, 1: {"a": {"accuracy": 0.6}}}

    def rec(model, seed, best, ran, task=None):
        return {
            "model": model,
            "task": task,
            "seed": seed,
            "best_epoch": best,
            "epochs_run": ran,
            "max_epochs": 10,
        }

    runs = [
        rec("stl", 0, 4, 9, "a"),
        rec("stl", 1, 6, 10, "a"),
        rec("ew@hps", 0, 3, 8),
        rec("ew@hps", 1, 10, 10),
        rec("uw@hps", 0, 3, 8),
        rec("uw@hps", 1, 5, 10),
    ]
    summary = summarise(stl, {"ew@hps": mtl, "uw@hps": mtl}, convergence=runs)
    ew, uw = summary["variants"]["ew@hps"], summary["variants"]["uw@hps"]
    assert ew["not_converged"] == ["ew@hps seed 1 (best epoch 10 of 10 run, budget 10)"]
    assert "Not converged: raise the budget" in ew["verdict"]
    assert uw["not_converged"] == [] and "Not converged" not in uw["verdict"]
    assert [r["converged"] for r in summary["convergence"]] == [True] * 3 + [False, True, True]
    table = {(r["model"], r["task"]): r["epochs"] for r in rows(summary)}
    assert table[("ew@hps", "a")] == "3/8 10/10!"
    assert table[("STL", "a")] == "4/9 6/10"
    # an STL baseline that did not converge taints every verdict
    runs[0] = rec("stl", 0, 9, 9, "a")
    again = summarise(stl, {"ew@hps": mtl, "uw@hps": mtl}, convergence=runs)["variants"]
    assert "STL a seed 0 (best epoch 9 of 9 run, budget 10)" in again["uw@hps"]["not_converged"]


def test_comparison_runs_resumes_and_writes_tables(tmp_path) -> None:
    config = parse_config(tiny_config())
    console = Console(record=True, width=200)
    summary = run_compare(config, tmp_path, methods=["ew"], seeds=2, console=console)
    assert summary["seeds"] == [0, 1]
    variant = summary["variants"]["ew@hps"]
    assert len(variant["delta_m"]["values"]) == 2
    per_seed = summary["per_seed"]
    assert summary["primary"] == {"left": "accuracy", "right": "accuracy"}
    all_metrics = variant["delta_m_all_metrics"]["values"]
    for s, dm, dm_all in zip([0, 1], variant["delta_m"]["values"], all_metrics, strict=True):
        mtl = per_seed["variants"]["ew@hps"][s]
        base = per_seed["stl"][s]
        terms = [(mtl[t][m] - base[t][m]) / base[t][m] for t in base for m in base[t]]
        assert dm_all == pytest.approx(100 * np.mean(terms))
        acc = [(mtl[t]["accuracy"] - base[t]["accuracy"]) / base[t]["accuracy"] for t in base]
        assert dm == pytest.approx(100 * np.mean(acc))
    for name in ("compare.json", "compare.csv", "compare.md"):
        assert (tmp_path / name).is_file()
    assert "t over 2 seeds, paired by seed" in (tmp_path / "compare.md").read_text()
    # one epoch of budget: every run's best epoch is its last, and the verdict says so
    assert summary["protocol"] == {
        "max_epochs": 1,
        "patience": 5,
        "monitor": config.train.monitor,
        "selection": "best validation epoch of the monitor",
    }
    assert len(summary["convergence"]) == 2 * (2 + 1)
    assert all(r["best_epoch"] == r["epochs_run"] == 1 for r in summary["convergence"])
    assert len(variant["not_converged"]) == 6
    assert "Not converged: raise the budget" in variant["verdict"]
    # efficiency: STL sums its two models; latency measured on CPU, no peak memory there
    cost = summary["efficiency"]
    stl_params = [
        json.loads((tmp_path / "runs" / f"stl-{t}-seed0" / "results.json").read_text())[
            "parameters"
        ]
        for t in ("left", "right")
    ]
    assert cost["stl"]["params"] == sum(stl_params) and cost["stl"]["models"] == 2
    seed_seconds = [
        sum(
            json.loads((tmp_path / "runs" / f"stl-{t}-seed{s}" / "results.json").read_text())[
                "train_seconds"
            ]
            for t in ("left", "right")
        )
        for s in (0, 1)
    ]
    assert cost["stl"]["train_seconds"] == pytest.approx(np.mean(seed_seconds))
    for side in ("stl", "ew@hps"):
        assert cost[side]["latency_ms"] > 0 and cost[side]["throughput"] > 0
        assert cost[side]["peak_memory_mb"] is None  # CPU: not measurable honestly
        assert cost[side]["batch_examples"] == 32  # the whole tiny test split, one batch
    assert cost["ew@hps"]["params"] < cost["stl"]["params"]  # one shared encoder, not two
    for side in ("stl", "ew@hps"):  # throughput is the batch over the median latency
        expected = cost[side]["batch_examples"] / (cost[side]["latency_ms"] / 1000)
        assert cost[side]["throughput"] == pytest.approx(expected)
    assert json.loads((tmp_path / "compare.json").read_text())["seeds"] == [0, 1]
    # re-running reuses every finished run and gives the same numbers
    again = Console(record=True, width=200)
    second = run_compare(config, tmp_path, methods=["ew"], seeds=2, console=again)
    assert "training" not in again.export_text()
    assert second["variants"]["ew@hps"]["delta_m"] == variant["delta_m"]
    assert second["convergence"] == summary["convergence"]
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
    stl = {s: {"a": {"accuracy": 0.5}} for s in (0, 1)}
    mtl = {0: {"a": {"accuracy": 0.6}}, 1: {"a": {"accuracy": 0.6}}}
    md = to_markdown(summarise(stl, {"ew@hps": mtl}))
    assert "| STL | a | accuracy | yes | 0.5000 ± 0.0000 |" in md
    # Δm +20 on both seeds: zero spread, interval [20, 20]
    assert (
        "| ew@hps | a | accuracy | yes | 0.6000 ± 0.0000 | +20.00 [+20.00, +20.00] | better |" in md
    )


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


def test_protocol_gives_every_run_the_same_budget_and_patience(tmp_path) -> None:
    config = parse_config(tiny_config())
    assert protocol_config(config).train.patience == 5  # nothing set: the default
    assert protocol_config(config, patience=2, max_epochs=7).train.epochs == 7
    with_patience = config.model_copy(
        update={"train": config.train.model_copy(update={"patience": 3})}
    )
    assert protocol_config(with_patience).train.patience == 3
    with pytest.raises(ConfigError, match="'patience' must be ≥ 1"):
        protocol_config(config, patience=0)
    with pytest.raises(ConfigError, match="'max_epochs' must be ≥ 1"):
        protocol_config(config, max_epochs=0)


def test_every_run_trains_under_the_same_protocol(tmp_path) -> None:
    """STL and MTL runs get the same budget and patience (in their saved configs), and each
    either stopped ``patience`` epochs after its best or used the whole budget."""
    import yaml

    summary = run_compare(
        parse_config(tiny_config()),
        tmp_path,
        methods=["ew"],
        seeds=1,
        patience=1,
        max_epochs=3,
        efficiency=False,
        console=Console(record=True),
    )
    for folder in (tmp_path / "runs").iterdir():
        train = yaml.safe_load((folder / "config.yaml").read_text())["train"]
        assert (train["epochs"], train["patience"]) == (3, 1), folder.name
    assert len(summary["convergence"]) == 3
    for r in summary["convergence"]:
        assert (r["max_epochs"], r["patience"]) == (3, 1)
        if r["stopped_early"]:
            assert r["epochs_run"] == r["best_epoch"] + 1 and r["converged"]
        else:
            assert r["epochs_run"] == 3
            assert r["converged"] == (r["best_epoch"] < 3)
    assert "latency_ms" not in summary["efficiency"]["stl"]


def test_inference_serves_each_model_its_own_inputs() -> None:
    """Joint data: every model gets the whole batch; multi-input data: each STL model its
    task's inputs, the one MTL model ("all") every task's in turn. Counted, not timed."""
    import torch
    from torch import nn

    from mtlkit.experiments.compare import measure_inference
    from mtlkit.experiments.compare.efficiency import REPEATS, WARMUP

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            self.sizes.append(int(x.shape[0]))
            return {"y": x.sum(1)}

    passes = WARMUP + REPEATS
    cpu = torch.device("cpu")
    a, b = Recorder(), Recorder()
    out = measure_inference({"a": a, "b": b}, torch.ones(8, 3), cpu)
    assert a.sizes == b.sizes == [8] * passes
    assert out["batch_examples"] == 8 and out["peak_memory_mb"] is None
    inputs = {"a": torch.ones(5, 3), "b": torch.ones(7, 3)}
    a, b = Recorder(), Recorder()
    out = measure_inference({"a": a, "b": b}, inputs, cpu, multi_input=True)
    assert (a.sizes, b.sizes, out["batch_examples"]) == ([5] * passes, [7] * passes, 12)
    both = Recorder()
    out = measure_inference({"all": both}, inputs, cpu, multi_input=True)
    assert both.sizes == [5, 7] * passes and out["batch_examples"] == 12


def test_cli_compare_takes_the_protocol_options(tmp_path, capsys) -> None:
    import yaml

    from mtlkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "out"
    args = ["compare", str(path), "--methods", "ew", "--seeds", "1", "--max-epochs", "2"]
    assert main([*args, "--patience", "1", "--no-efficiency", "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["protocol"]["max_epochs"] == 2 and summary["protocol"]["patience"] == 1
    assert "latency_ms" not in summary["efficiency"]["stl"]
    printed = " ".join(capsys.readouterr().out.split())
    assert "one seed cannot decide" in printed and "± 0" not in printed
    assert main([*args, "--patience", "0", "--out", str(tmp_path / "o2")]) == 2
    assert "'patience' must be ≥ 1" in capsys.readouterr().err
