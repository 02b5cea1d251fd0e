"""Distributed training: 2 gloo ranks on the CPU, started by the tests, against one process.

The claim under test (docs/distributed.md): a run on R ranks with batch b per rank is the run
of one process with batch R·b — the same task weights at every step, the same evaluation
metrics, the same parameters after k steps — for loss-based and gradient-based methods alike.
Models are MLPs (no batch statistics), so the only differences left are the float32 rounding
of sums taken in another order: tolerances are stated per check.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.data.sharding import ShardedLoader, shard_split
from mtlkit.errors import ConfigError, DatasetError, TaskDataError
from mtlkit.train import Trainer
from mtlkit.train.distributed import (
    Distributed,
    DistributedWeighting,
    init_distributed,
    teardown,
)
from mtlkit.weighting import compose, get
from tests.conftest import tiny_model, tiny_split, tiny_tasks
from tests.train import _multi_input as multi

WORLD = 2
PER_RANK = 8  # batch per rank; the single process uses WORLD · PER_RANK
N_TRAIN, N_VAL = 51, 13  # uneven on purpose: a last global batch of 3 (2 + 1), val shards 7 + 6
EPOCHS = 2  # 4 steps per epoch
#: the methods the issue names, plus paths of the engine the wrapper must also keep exact
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("ew", {}),
    ("uw", {}),
    ("mgda", {}),
    ("pcgrad", {"seed": 3}),
    ("cagrad", {}),
    ("nash_mtl", {}),
    ("upgrad", {}),
    ("dwa", {}),
    ("famo", {}),
    ("mgda", {"jacobian": "last_shared"}),
    ("upgrad", {"update_every": 2}),
]
#: float32: two ranks' halves of a mean, summed, against the mean of the whole batch, after
#: 8 SGD steps
RTOL, ATOL = 1e-4, 1e-5


def _data() -> tuple[TensorSplit, TensorSplit]:
    return tiny_split(N_TRAIN, 0), tiny_split(N_VAL, 1, "val")


def _method(name: str, params: dict[str, Any]) -> Any:
    return get(name, **params)


def _run(method: Any, ctx: Distributed | None, **options: Any) -> dict[str, Any]:
    """Train the tiny model; returns per-step task weights, history and final parameters."""
    train, val = _data()
    if ctx is None:
        train_loader: Any = TensorLoader(train, WORLD * PER_RANK, shuffle=True)
        val_loader = TensorLoader(val, 4)
    else:
        train_loader = ShardedLoader(train, PER_RANK, rank=ctx.rank, world_size=ctx.world_size)
        val_loader = TensorLoader(shard_split(val, ctx.rank, ctx.world_size), 4)
    stop_after = options.pop("stop_after", None)
    options.setdefault("epochs", EPOCHS)
    weights: list[dict[str, float]] = []
    trainer = Trainer(
        tiny_model(),
        tiny_tasks(),
        method,
        optimizer="sgd",
        optimizer_params={"lr": 0.1},
        device="cpu",
        progress=False,
        distributed=ctx,
        **options,
    )
    backward = trainer.weighting.backward  # the method, or its distributed wrapper

    def recording(*args: Any, **kwargs: Any) -> Any:
        record = backward(*args, **kwargs)
        weights.append(record.weights)
        return record

    trainer.weighting.backward = recording  # type: ignore[method-assign]
    fit = trainer.fit(train_loader, val_loader, stop_after=stop_after)
    return {
        "weights": weights,
        "history": [{k: r[k] for k in ("train", "val")} for r in fit.history],
        "params": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


# ---------------------------------------------------------------------------- process harness


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, out: str, job: str, timeout_s: float) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result: Any
    try:
        ctx = init_distributed("gloo", timeout_s=timeout_s)
        started = time.monotonic()
        result = JOBS[job](ctx, Path(out))
        print(f"rank {rank}: job {job} took {time.monotonic() - started:.1f} s", flush=True)
    except Exception as err:  # reported to the test, which fails with it
        result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    teardown()


def spawn(job: str, tmp_path: Path, timeout_s: float = 30.0, world: int = WORLD) -> list[Any]:
    """Run ``JOBS[job]`` on ``world`` gloo ranks; each rank's result. Never waits past the
    deadline: the processes are killed and the test fails."""
    context = mp.start_processes(
        _entry,
        args=(world, _free_port(), str(tmp_path), job, timeout_s),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed job '{job}' did not finish in time")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "error" in result and "trace" in result:
            pytest.fail(f"rank {rank}: {result['error']}\n{result['trace']}")
    return results


# ---------------------------------------------------------------------------- jobs (per rank)


def _job_methods(ctx: Distributed, out: Path) -> dict[str, Any]:
    return {f"{n}{p}": _run(_method(n, p), ctx, seed=0) for n, p in METHODS}


def _job_resume(ctx: Distributed, out: Path) -> dict[str, Any]:
    def method() -> Any:
        return compose("uw", get("pcgrad", seed=1))

    whole = _run(method(), ctx, seed=0, run_dir=out / "whole")
    _run(method(), ctx, seed=0, run_dir=out / "cut", stop_after=1)
    resumed = _resume(method(), ctx, out / "cut")
    return {"whole": whole, "resumed": resumed}


def _resume(method: Any, ctx: Distributed, run_dir: Path) -> dict[str, Any]:
    train, val = _data()
    trainer = Trainer(
        tiny_model(seed=5),  # other weights: the checkpoint must replace them
        tiny_tasks(),
        method,
        optimizer="sgd",
        optimizer_params={"lr": 0.1},
        epochs=EPOCHS,
        device="cpu",
        progress=False,
        distributed=ctx,
        seed=0,
        run_dir=run_dir,
    )
    fit = trainer.fit(
        ShardedLoader(train, PER_RANK, rank=ctx.rank, world_size=ctx.world_size),
        TensorLoader(shard_split(val, ctx.rank, ctx.world_size), 4),
        resume=run_dir,
    )
    return {
        "history": [{k: r[k] for k in ("train", "val")} for r in fit.history],
        "params": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


#: gradient methods and modes whose reductions the wrapper overlaps (update_every: the
#: task-specific reduction runs during the method's backward instead)
OVERLAP_METHODS: list[tuple[str, dict[str, Any]]] = [
    ("upgrad", {}),
    ("pcgrad", {"seed": 3}),
    ("nash_mtl", {}),
    ("mgda", {"jacobian": "last_shared"}),
    ("upgrad", {"update_every": 2}),
]


#: overlap variants: off; on with J in one piece; on with J in row chunks (a 1-byte bucket)
OVERLAPS: dict[str, dict[str, Any]] = {
    "blocking": {"overlap": False},
    "overlapped": {"overlap": True},
    "chunked": {"overlap": True, "bucket_bytes": 1},
}


def _job_overlap(ctx: Distributed, out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, params in OVERLAP_METHODS:
        runs = {}
        for variant, options in OVERLAPS.items():
            wrapper = DistributedWeighting(_method(name, params), ctx, **options)
            runs[variant] = _run(wrapper, ctx, seed=0)
            runs[variant]["overlapped_steps"] = wrapper.overlapped_steps
            runs[variant]["chunks"] = wrapper.chunks_last_step
        result[f"{name}{params}"] = runs
    return result


def _job_timeout(ctx: Distributed, out: Path) -> dict[str, Any]:
    """Rank 1 never joins rank 0's all-reduce: rank 0 must raise after the group's timeout.

    The check has its own process group with a short timeout (TIMEOUT_S); the job's group,
    which every other collective uses, has a generous one (GROUP_TIMEOUT_S), so that a rank
    slowed down by a loaded machine never fails them."""
    quick = dist.new_group(timeout=timedelta(seconds=TIMEOUT_S))
    if ctx.rank == 1:
        time.sleep(SLEEP_S)
        return {"rank": 1}
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(3), group=quick)
    except Exception as err:
        return {"raised": type(err).__name__, "after": time.monotonic() - started}
    return {"raised": None, "after": time.monotonic() - started}


#: multi-input runs (two tasks, each its own split, of 45 and 22 examples): step mode,
#: sampler, method
MULTI_RUNS: dict[str, tuple[str, str, str]] = {
    "mixed/upgrad": ("mixed", "proportional", "upgrad"),
    "mixed/dwa": ("mixed", "proportional", "dwa"),
    "single/temperature/uw": ("single", "temperature", "uw"),
}


def _run_multi(step_mode: str, sampler: str, method: str, ctx: Distributed | None) -> Any:
    """Train on multi-input data for 2 epochs; per-step losses (the task drawn) and task
    weights, per-epoch history, final parameters."""
    data = multi.multi_data(step_mode, sampler)
    if ctx is None:
        train = data.loader("train", WORLD * multi.PER_RANK)
        val = data.loader("val", 4)
    else:  # as experiments.run.Run.loader does under torchrun
        train = data.loader("train", multi.PER_RANK, rank=ctx.rank, world_size=ctx.world_size)
        val = data.loader("val", 4, rank=ctx.rank, world_size=ctx.world_size)
        ctx.check_same(train.schedule(), "the multi-input task schedule")  # type: ignore[union-attr]
    weighting = get(method)
    trainer = Trainer(
        tiny_model(tasks=multi.TASKS),
        multi.TASKS,
        weighting,
        optimizer="sgd",
        optimizer_params={"lr": 0.1},
        epochs=2,
        device="cpu",
        progress=False,
        distributed=ctx,
        seed=0,
    )
    steps: list[dict[str, float]] = []
    weights: list[dict[str, float]] = []
    depth: list[int] = []
    step, backward = trainer.train_step, trainer.weighting.backward

    def recording_step(batch: Any) -> dict[str, float]:
        steps.append(step(batch))
        return steps[-1]

    def recording_backward(*args: Any, **kwargs: Any) -> Any:
        depth.append(1)  # a partial step calls backward again, on the present tasks
        record = backward(*args, **kwargs)
        depth.pop()
        if not depth:
            weights.append(record.weights)
        return record

    trainer.train_step = recording_step  # type: ignore[method-assign]
    trainer.weighting.backward = recording_backward  # type: ignore[method-assign]
    fit = trainer.fit(train, val)
    return {
        "steps": steps,
        "weights": weights,
        "train": [r["train"] for r in fit.history],
        "val": [r["val"] for r in fit.history],  # metrics and mean losses over all ranks
        "params": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


def _job_multi_input(ctx: Distributed, out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {k: _run_multi(*spec, ctx) for k, spec in MULTI_RUNS.items()}
    try:  # a value that differs on rank 1 must stop every rank, naming the field
        ctx.check_same({"seed": 0, "epoch": ctx.rank}, "the multi-input task schedule")
        result["mismatch"] = None
    except ConfigError as err:
        result["mismatch"] = str(err)
    return result


def _job_all(ctx: Distributed, out: Path) -> dict[str, Any]:
    """One process group for every check (starting processes is the slow part); the timeout
    check breaks the group, so it comes last."""
    return {
        "methods": _job_methods(ctx, out),
        "resume": _job_resume(ctx, out),
        "multi_input": _job_multi_input(ctx, out),
        "overlap": _job_overlap(ctx, out),
        "timeout": _job_timeout(ctx, out),
    }


JOBS = {"all": _job_all}
#: the missing-rank check's group timeout, and how long the missing rank stays away
TIMEOUT_S, SLEEP_S = 5.0, 12.0
#: every other collective's timeout (the job's group): far above a step on a loaded machine
GROUP_TIMEOUT_S = 120.0
#: a guard against a hang, far above the job's time on a loaded 2-core machine (~30 s)
DEADLINE_S = 240.0


# ---------------------------------------------------------------------------- assertions


def _close(a: Any, b: Any, where: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}/{k}", rtol, atol)
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]", rtol, atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
    else:
        assert a == pytest.approx(b, rel=rtol, abs=atol), f"{where}: {a} vs {b}"


def _identical(a: Any, b: Any, where: str) -> None:
    _close(a, b, where, rtol=0.0, atol=0.0)


@pytest.mark.slow
def test_two_gloo_ranks(tmp_path: Path) -> None:
    """Two processes, one process group, four claims (each checked by a function below)."""
    ranks = spawn("all", tmp_path, timeout_s=GROUP_TIMEOUT_S)
    two_ranks_equal_one_process_with_twice_the_batch([r["methods"] for r in ranks])
    resume_of_a_two_rank_run_continues_exactly([r["resume"] for r in ranks], tmp_path)
    multi_input_runs_agree_across_ranks_and_with_one_process([r["multi_input"] for r in ranks])
    the_overlapped_reductions_give_the_plain_update([r["overlap"] for r in ranks])
    a_missing_rank_makes_collectives_fail_instead_of_hanging([r["timeout"] for r in ranks])


def two_ranks_equal_one_process_with_twice_the_batch(ranks: list[dict[str, Any]]) -> None:
    """Per-step task weights, per-epoch train losses and validation metrics, and the final
    parameters of a 2-rank run equal a 1-process run with batch 2b; both ranks agree exactly."""
    start = tiny_model().state_dict()
    for name, params in METHODS:
        key = f"{name}{params}"
        reference = _run(_method(name, params), None, seed=0)
        zero, one = ranks[0][key], ranks[1][key]
        assert len(zero["weights"]) == EPOCHS * 4
        _identical(zero, one, f"{key}: rank 0 vs rank 1")
        _close(zero["weights"], reference["weights"], f"{key}: weights")
        _close(zero["history"], reference["history"], f"{key}: history")
        _close(zero["params"], reference["params"], f"{key}: parameters")
        moved = max((zero["params"][k] - start[k]).abs().max().item() for k in start)
        assert moved > 1e-3, f"{key}: the parameters did not train"


def resume_of_a_two_rank_run_continues_exactly(ranks: list[dict[str, Any]], out: Path) -> None:
    """A 2-rank run cut after epoch 1 and resumed (by trainers with other initial weights)
    ends bitwise where the uninterrupted run ends; rank 0 alone wrote the logs."""
    for rank in ranks:
        _identical(rank["resumed"]["params"], rank["whole"]["params"], "resumed parameters")
        _identical(rank["resumed"]["history"], rank["whole"]["history"], "resumed history")
    _identical(ranks[0], ranks[1], "rank 0 vs rank 1")
    lines = (out / "whole" / "metrics.jsonl").read_text().splitlines()
    assert sum('"type": "epoch"' in line for line in lines) == EPOCHS  # one writer, not two
    assert (out / "cut" / "checkpoint").is_dir()


def multi_input_runs_agree_across_ranks_and_with_one_process(ranks: list[dict[str, Any]]) -> None:
    """Multi-input data, each task's batch sharded over the ranks: mixed steps (UPGrad, DWA)
    and single steps drawn by a sampler give bitwise the same steps, task weights and
    parameters on both ranks, and the 1-process run with batch 2b (same tolerance as above);
    a schedule that differs on one rank is refused on every rank."""
    start = tiny_model(tasks=multi.TASKS).state_dict()
    for key, spec in MULTI_RUNS.items():
        zero, one = ranks[0][key], ranks[1][key]
        _identical(zero, one, f"{key}: rank 0 vs rank 1")
        reference = _run_multi(*spec, None)
        per_epoch = 6 if spec[0] == "mixed" else 9  # max_i b_i | Σ_i b_i, global batches of 8
        assert len(zero["steps"]) == len(reference["steps"]) == 2 * per_epoch, key
        drawn = [sorted(s) for s in zero["steps"]]
        assert drawn == [sorted(s) for s in reference["steps"]], f"{key}: tasks drawn"
        if spec[0] == "single":
            assert {"cls"} in map(set, drawn) and {"reg"} in map(set, drawn), key
        for part in ("steps", "weights", "train", "val", "params"):
            _close(zero[part], reference[part], f"{key}: {part}")
        moved = max((zero["params"][k] - start[k]).abs().max().item() for k in start)
        assert moved > 1e-3, f"{key}: the parameters did not train"
    for rank in ranks:
        assert rank["mismatch"] is not None and "fields that differ: epoch" in rank["mismatch"]


def the_overlapped_reductions_give_the_plain_update(ranks: list[dict[str, Any]]) -> None:
    """Reductions started asynchronously (the Jacobian's while the task-specific gradients
    are computed, theirs during the solve) give every step the same task weights, history and
    parameters as blocking reductions: the same values are summed (for two ranks a + b,
    whatever the order), so bitwise. With the Jacobian taken in row chunks (each chunk's
    all-reduce during the next chunk's backward pass) each row is the same gradient, computed
    by a vectorised pass over fewer rows: equal to float32 rounding (the tolerance of the
    2-rank vs 1-process check). The overlapped paths were taken at every step."""
    for key in (f"{n}{p}" for n, p in OVERLAP_METHODS):
        for rank in ranks:
            runs = rank[key]
            assert runs["blocking"].pop("overlapped_steps") == 0, key
            assert runs["blocking"].pop("chunks") == 0, key
            for variant, chunks in (("overlapped", 1), ("chunked", 2)):
                assert runs[variant].pop("overlapped_steps") == EPOCHS * 4, key
                assert runs[variant].pop("chunks") == chunks, (key, variant)
            _identical(runs["overlapped"], runs["blocking"], f"{key}: overlapped vs blocking")
            _close(runs["chunked"], runs["blocking"], f"{key}: chunked vs blocking")


def a_missing_rank_makes_collectives_fail_instead_of_hanging(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["raised"] is not None
    assert TIMEOUT_S - 1 < ranks[0]["after"] < SLEEP_S - 1


# ---------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("n", [51, 48, 17])
def test_sharded_batches_are_the_single_process_batches(n: int) -> None:
    split = tiny_split(n, 0)
    torch.manual_seed(4)
    single = [y["reg"] for _, y in TensorLoader(split, WORLD * PER_RANK, shuffle=True)]
    shards = []
    for rank in range(WORLD):
        torch.manual_seed(4)  # every rank draws the same permutation
        loader = ShardedLoader(split, PER_RANK, rank=rank, world_size=WORLD)
        shards.append([y["reg"] for _, y in loader])
        assert len(loader) == len(shards[-1])
    assert len(single) - len(shards[0]) == (1 if 0 < n % (WORLD * PER_RANK) < WORLD else 0)
    for step, batch in enumerate(single[: len(shards[0])]):
        joined = torch.cat([shards[r][step] for r in range(WORLD)])
        assert torch.equal(joined, batch), f"step {step}"
        assert all(len(shards[r][step]) >= 1 for r in range(WORLD))


def test_a_last_batch_smaller_than_the_world_is_skipped() -> None:
    split = tiny_split(17, 0)  # 16 + 1: one sample cannot feed 2 ranks
    loaders = [ShardedLoader(split, 8, rank=r, world_size=2) for r in range(2)]
    assert [len(x) for x in loaders] == [1, 1]
    assert len(ShardedLoader(split, 8, rank=0, world_size=2, drop_last=True)) == 1
    assert len(ShardedLoader(tiny_split(18, 0), 8, rank=0, world_size=2)) == 2


def test_evaluation_shards_concatenate_to_the_split() -> None:
    split = tiny_split(13, 0)
    parts = [shard_split(split, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [5, 4, 4]
    assert torch.equal(torch.cat([p.inputs for p in parts]), split.inputs)  # type: ignore[list-item]


def test_bad_sharding_options_are_named() -> None:
    with pytest.raises(DatasetError, match="'rank'"):
        ShardedLoader(tiny_split(8, 0), 2, rank=2, world_size=2)
    with pytest.raises(DatasetError, match="'batch_size'"):
        ShardedLoader(tiny_split(8, 0), 0, rank=0, world_size=2)


def test_representation_mode_is_refused_with_the_option_named() -> None:
    for method in (
        get("mgda", jacobian="representation"),
        compose("uw", get("pcgrad", jacobian="representation")),
    ):
        with pytest.raises(ConfigError, match="'jacobian'"):
            DistributedWeighting(method, Distributed(0, 2))


def test_losses_that_were_not_globalized_are_refused() -> None:
    wrapped = Distributed(0, 2).wrap(get("upgrad"))
    model = tiny_model()
    x, y = tiny_split(8, 0)[torch.arange(8)]
    out = model(x)
    losses = {t.name: t.compute_loss(out[t.name], y[t.name]) for t in tiny_tasks()}
    with pytest.raises(TaskDataError, match="globalize"):
        wrapped.backward(losses, model)


def test_the_wrapper_keeps_the_method_state_and_name() -> None:
    method = get("uw")
    wrapped = Distributed(0, 2).wrap(method)
    assert wrapped.method is method and Distributed(0, 2).wrap(wrapped) is wrapped
    wrapped.bind(["cls", "reg"])
    assert method.tasks == ["cls", "reg"] == wrapped.tasks
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in method.parameters()]
    assert wrapped.state_dict().keys() == method.state_dict().keys()
    assert str(wrapped) == str(method) and wrapped.stateful == method.stateful


def test_label_mask_counts_what_a_masked_mean_averages_over() -> None:
    cls, reg = tiny_tasks()
    assert int(cls.label_mask(torch.tensor([0, -100, 2, 1])).sum()) == 3
    assert int(reg.label_mask(torch.tensor([0.5, float("nan"), 1.0])).sum()) == 2
