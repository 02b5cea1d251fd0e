"""Multi-input training: per-task datasets, the two step modes, epochs, partial labels in the
Trainer, multi-input configs, auxiliary tasks in Δm."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch

from mtlkit.config import parse_config
from mtlkit.data import DATASETS, DataBundle, TensorSplit
from mtlkit.data.multi import MultiInputData, MultiTaskLoader, TaskBatches
from mtlkit.errors import ConfigError
from mtlkit.experiments.demo import run_comparison
from mtlkit.experiments.run import build_run
from mtlkit.nn import build_model
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.tasks import IGNORE_INDEX, Task, delta_m
from mtlkit.train import Trainer
from mtlkit.weighting import get

TASKS = [Task("cls", "classification", 3), Task("reg", "regression", 1)]


def split(task: str, n: int, seed: int, name: str = "train") -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long() if task == "cls" else x[:, 2] * 2 + x[:, 3]
    return TensorSplit(x, {task: y}, name)


def multi_data(step_mode: str = "mixed", sampler: str = "proportional") -> MultiInputData:
    sizes = {"cls": 80, "reg": 24}
    return MultiInputData(
        "tiny_multi",
        [copy.deepcopy(t) for t in TASKS],
        {t: split(t, n, i) for i, (t, n) in enumerate(sizes.items())},
        {t: split(t, 16, 10 + i, "val") for i, t in enumerate(sizes)},
        {t: split(t, 16, 20 + i, "test") for i, t in enumerate(sizes)},
        ("mlp", {"in_features": 6}),
        step_mode=step_mode,
        sampler=sampler,
    )


def model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("hps", MLPEncoder(6, hidden=[16]), TASKS)


# ---------------------------------------------------------------------------- the loader


def test_mixed_mode_gives_every_task_each_step_and_an_epoch_of_the_largest_task() -> None:
    loader = MultiTaskLoader({"cls": split("cls", 80, 0), "reg": split("reg", 24, 1)}, 8)
    assert len(loader) == 10  # max(80/8, 24/8)
    steps = list(loader)
    assert len(steps) == 10 and all(isinstance(s, TaskBatches) for s in steps)
    assert all(set(s) == {"cls", "reg"} for s in steps)
    seen = Counter(float(x[0, 0]) for s in steps for x in [s["reg"][0]])
    assert sum(seen.values()) == 10  # 'reg' ran out after 3 steps and was reshuffled
    cls_rows = torch.cat([s["cls"][0] for s in steps])
    assert torch.equal(cls_rows.sort(dim=0).values, split("cls", 80, 0).inputs.sort(dim=0).values)


def test_single_mode_epoch_is_every_batch_once_with_the_sequential_sampler() -> None:
    loader = MultiTaskLoader(
        {"cls": split("cls", 80, 0), "reg": split("reg", 24, 1)},
        8,
        step_mode="single",
        sampler="sequential",
    )
    assert len(loader) == 13  # 10 + 3 batches
    steps = list(loader)
    assert [next(iter(s)) for s in steps] == ["cls"] * 10 + ["reg"] * 3
    reg = torch.cat([s["reg"][1]["reg"] for s in steps if "reg" in s])
    assert torch.equal(reg.sort().values, split("reg", 24, 1).targets["reg"].sort().values)


def test_single_mode_task_frequencies_follow_the_sampler() -> None:
    loader = MultiTaskLoader(
        {"cls": split("cls", 80, 0), "reg": split("reg", 20, 1)},
        4,
        step_mode="single",
        sampler="proportional",
        steps_per_epoch=5000,
    )
    got = Counter(next(iter(s)) for s in loader)
    assert got["cls"] == pytest.approx(4000, abs=5 * (5000 * 0.8 * 0.2) ** 0.5)


def test_the_epoch_is_passed_to_the_sampler() -> None:
    loader = MultiTaskLoader(
        {"cls": split("cls", 80, 0), "reg": split("reg", 24, 1)},
        8,
        step_mode="single",
        sampler="uniform",
    )
    first, second = [next(iter(s)) for s in loader], [next(iter(s)) for s in loader]
    loader.set_epoch(1)
    assert [next(iter(s)) for s in loader] == second != first


def test_bad_loader_options() -> None:
    splits = {"cls": split("cls", 8, 0)}
    with pytest.raises(ConfigError, match="option 'step_mode' must be one of single, mixed"):
        MultiTaskLoader(splits, 4, step_mode="both")
    with pytest.raises(ConfigError, match="option 'steps_per_epoch' must be ≥ 1"):
        MultiTaskLoader(splits, 4, steps_per_epoch=0)
    with pytest.raises(ConfigError, match="no task has a dataset"):
        MultiTaskLoader({}, 4)


def test_a_task_without_a_dataset_is_an_error() -> None:
    data = multi_data()
    with pytest.raises(ConfigError, match="task 'reg' has no train data"):
        MultiInputData(
            "m", data.tasks, {"cls": data.train["cls"]}, data.val, data.test, ("mlp", {})
        )


# ---------------------------------------------------------------------------- the Trainer


def test_mixed_step_is_the_sum_of_each_task_s_loss_on_its_own_data() -> None:
    data = multi_data()
    step = next(iter(data.loader("train", 8, shuffle=False)))
    net = model()
    twin = copy.deepcopy(net)
    trainer = Trainer(net, TASKS, get("ew"), optimizer="sgd", optimizer_params={"lr": 0.1})
    trainer.train_step(step)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    loss = sum(
        TASKS[i].compute_loss(twin(step[t][0])[t], step[t][1][t]) for i, t in enumerate(step)
    )
    loss.backward()
    opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_single_step_trains_only_the_drawn_task_s_head() -> None:
    data = multi_data("single")
    net = model()
    before = copy.deepcopy(net.state_dict())
    trainer = Trainer(net, TASKS, get("uw"), step_mode="single")
    trainer.train_step(TaskBatches({"reg": data.val["reg"][torch.arange(8)]}))
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(not k.startswith("heads.cls") for k in changed)
    assert any(k.startswith("heads.reg") for k in changed)


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "nash_mtl"])
def test_gradient_methods_need_mixed_steps(method: str) -> None:
    with pytest.raises(ConfigError, match="needs step_mode: mixed"):
        Trainer(model(), TASKS, get(method), step_mode="single")
    trainer = Trainer(model(), TASKS, get(method), epochs=1, progress=False)
    with pytest.raises(ConfigError, match="needs step_mode: mixed"):  # the loader's mode
        trainer.fit(multi_data("single").loader("train", 8))


def test_fit_and_evaluate_on_per_task_data() -> None:
    data = multi_data("single", "round_robin")
    trainer = Trainer(model(), TASKS, get("dwa"), epochs=3, progress=False, monitor="cls/accuracy")
    fit = trainer.fit(data.loader("train", 8), data.loader("val", 8))
    assert len(fit.history) == 3
    assert set(fit.history[-1]["train"]["loss"]) == {"cls", "reg"}
    results = trainer.evaluate(data.loader("test", 5))
    net = trainer.model.eval()
    with torch.no_grad():
        x, y = data.test["reg"].inputs, data.test["reg"].targets["reg"]
        want = TASKS[1].compute_loss(net(x)["reg"], y)
    assert results["reg"]["loss"] == pytest.approx(float(want), rel=1e-5)


def test_resume_of_a_multi_input_run_is_exact(tmp_path: Path) -> None:
    def trainer(run_dir: Path) -> Trainer:
        return Trainer(model(), TASKS, get("rlw"), epochs=2, progress=False, run_dir=run_dir)

    data = multi_data("single", "temperature")
    whole = trainer(tmp_path / "a")
    whole.fit(data.loader("train", 8))
    first = trainer(tmp_path / "b")
    first.fit(data.loader("train", 8), stop_after=1)
    resumed = trainer(tmp_path / "c")
    resumed.fit(data.loader("train", 8), resume=tmp_path / "b")
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["si", "gls", "famo", "mgda", "gradnorm"])
def test_a_task_without_labels_in_a_joint_batch_gets_no_gradient(method: str) -> None:
    net = model()
    trainer = Trainer(net, TASKS, get(method), optimizer="sgd", optimizer_params={"lr": 0.1})
    x = torch.randn(8, 6)
    labelled = {"cls": torch.randint(0, 3, (8,)), "reg": torch.randn(8)}
    trainer.train_step((x, labelled))
    before = copy.deepcopy(net.state_dict())
    losses = trainer.train_step((x, {"cls": torch.full((8,), IGNORE_INDEX), "reg": torch.randn(8)}))
    assert set(losses) == {"reg"}
    after = net.state_dict()
    for k in after:
        assert torch.equal(after[k], before[k]) == k.startswith("heads.cls"), k
    partial = {"cls": torch.randint(0, 3, (8,)), "reg": torch.full((8,), float("nan"))}
    assert set(trainer.train_step((x, partial))) == {"cls"}
    assert set(trainer.train_step((x, labelled))) == {"cls", "reg"}


# ---------------------------------------------------------------------------- configs


@DATASETS.register("tiny_two_task_source")
def tiny_two_task_source(seed: int = 0, n_train: int = 48) -> DataBundle:
    """A joint tabular dataset (classification + regression) for multi-input configs."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int, name: str) -> TensorSplit:
        x = torch.randn(n, 6, generator=g)
        return TensorSplit(x, {"cls": (x[:, 0] > 0).long(), "reg": x[:, 2]}, name)

    return DataBundle(
        "tiny_two_task_source",
        make(n_train, "train"),
        make(16, "val"),
        make(16, "test"),
        [Task("cls", "classification", 2), Task("reg", "regression", 1)],
        ("mlp", {"in_features": 6}),
    )


def multi_config(**train: object) -> dict:
    return {
        "name": "multi",
        "seed": 0,
        "data": {
            "name": "multi_input",
            "params": {
                "datasets": {
                    "sign": {"name": "tiny_two_task_source", "task": "cls"},
                    "value": {
                        "name": "tiny_two_task_source",
                        "params": {"seed": 1, "n_train": 96},
                        "task": "reg",
                    },
                }
            },
            "batch_size": 16,
        },
        "model": {"encoder": {"name": "mlp", "params": {"hidden": [8]}}},
        "train": {"epochs": 1, "monitor": "loss", **train},
    }


def test_a_multi_input_config_builds_per_task_data_and_the_step_mode() -> None:
    run = build_run(multi_config(step_mode="single", sampler={"name": "annealed"}))
    assert isinstance(run.data, MultiInputData)
    assert [t.name for t in run.tasks] == ["sign", "value"]
    assert {t: len(s) for t, s in run.data.train.items()} == {"sign": 48, "value": 96}
    loader = run.loader("train", train=True)
    assert loader.step_mode == "single" and len(loader) == 3 + 6
    trainer = run.trainer(progress=False)
    assert trainer.step_mode == "single"
    bad = multi_config(step_mode="single")
    bad["weighting"] = {"name": "cagrad"}
    with pytest.raises(ConfigError, match="needs step_mode: mixed"):
        build_run(bad).trainer(progress=False)


def test_config_errors_for_multi_input_data() -> None:
    cfg = multi_config()
    cfg["tasks"] = [{"name": "sign"}, {"name": "depth"}]
    with pytest.raises(ConfigError, match="task 'depth' has no dataset"):
        build_run(cfg)
    cfg = multi_config()
    cfg["data"]["params"]["datasets"]["value"] = {"params": {}}
    with pytest.raises(ConfigError, match="task 'value' has no dataset"):
        build_run(cfg)
    with pytest.raises(ConfigError, match="option 'datasets' must map each task"):
        build_run({**multi_config(), "data": {"name": "multi_input"}})
    joint = multi_config(step_mode="mixed")
    joint["data"] = {"name": "tiny_two_task_source"}
    with pytest.raises(ConfigError, match=r"field 'train\.step_mode' applies to multi-input data"):
        build_run(joint)


def test_auxiliary_tasks_are_trained_but_left_out_of_delta_m(tmp_path: Path) -> None:
    cfg = multi_config()
    cfg["tasks"] = [{"name": "sign"}, {"name": "value", "auxiliary": True}]
    results = run_comparison(parse_config(cfg), tmp_path, progress=False)
    assert set(results["delta_m_per_task"]) == {"sign"}
    assert "value" in results["mtl"]["test"]  # trained and evaluated all the same
    metrics = results["mtl"]["tasks"]["sign"]["metrics"]
    stl = {"sign": {m: results["stl"]["sign"]["test"]["sign"][m] for m in metrics}}
    mtl = {"sign": {m: results["mtl"]["test"]["sign"][m] for m in metrics}}
    assert results["delta_m_all_metrics"] == pytest.approx(delta_m(mtl, stl))
    primary = results["primary"]["sign"]
    assert results["delta_m"] == pytest.approx(delta_m(mtl, stl, metrics={"sign": primary}))


def test_under_torchrun_a_run_shards_multi_input_data_and_checks_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run.loader gives each rank its shard of every task's batch and of each evaluation
    split, and compares the training schedule across ranks (the collective is faked here; the
    2-process test in test_distributed.py runs it for real)."""
    import mtlkit.experiments.run as run_module
    from mtlkit.train.distributed import Distributed

    checked: list[tuple[dict, str]] = []
    monkeypatch.setattr(Distributed, "check_same", lambda self, v, what: checked.append((v, what)))
    run = build_run(multi_config(step_mode="single", sampler={"name": "temperature"}))
    loaders = []
    for rank in range(2):
        monkeypatch.setattr(run_module, "current", lambda rank=rank: Distributed(rank, 2))
        loaders.append((run.loader("train", train=True), run.loader("val")))
    schedules = [loader.schedule() for loader, _ in loaders]
    assert [v for v, _ in checked] == schedules and schedules[0] == schedules[1]
    assert checked[0][1] == "the multi-input task schedule"
    assert schedules[0]["global_batch"] == {"sign": 32, "value": 32}  # 16 per rank
    assert len(loaders[0][0]) == 2 + 3  # ⌈48/32⌉ + 96/32 global batches
    for task in ("sign", "value"):
        blocks = [torch.cat([b[task][0] for b in val if task in b]) for _, val in loaders]
        assert [len(b) for b in blocks] == [8, 8]
        assert torch.equal(torch.cat(blocks), run.data.val[task].inputs)


def test_compare_measures_inference_on_multi_input_data(tmp_path: Path) -> None:
    """Each STL model serves its own task's test batch; the MTL model serves both."""
    from rich.console import Console

    from mtlkit.experiments.compare import run_compare

    cfg = parse_config(multi_config())
    summary = run_compare(cfg, tmp_path, methods=["ew"], seeds=1, console=Console(quiet=True))
    first: dict[str, int] = {}
    for batch in build_run(cfg).loader("test"):
        for task, (inputs, _) in batch.items():
            first.setdefault(task, int(inputs.shape[0]))
    assert set(first) == {"sign", "value"}
    examples = sum(first.values())
    for side in ("stl", "ew@hps"):
        cost = summary["efficiency"][side]
        assert cost["batch_examples"] == examples
        assert cost["latency_ms"] > 0 and cost["peak_memory_mb"] is None
    assert summary["efficiency"]["stl"]["models"] == 2
