"""Sharded training (FSDP2, ``train.strategy: fsdp``): 2 gloo ranks on the CPU against one process.

The claims under test (docs/distributed.md, "Sharded shared encoders"): under FSDP, every
Gramian method's update on the sharded encoder (rebuilt from the ranks' shards) equals the
single-process update on the same global batch; loss-based methods train as one process does,
their state identical on both ranks; a run cut after one epoch and resumed from its
sharded checkpoint (each rank writes its shards through torch.distributed.checkpoint, as
safetensors) ends bitwise where the uninterrupted run ends, and one process, or a 1-rank
FSDP job, loads it whole;
evaluation with unequal batch counts per rank ends, with one process's metrics. The shared
layer has 15 rows, so the two shards are uneven (8 + 7); the ranks hold 9 and 7 samples.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from torch.distributed.tensor import DTensor

from mtlkit.config import parse_config
from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.data.sharding import ShardedLoader, shard_split
from mtlkit.errors import ConfigError
from mtlkit.nn import build_model
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.tasks import Task
from mtlkit.train import Trainer
from mtlkit.train.checkpoint import load_model_weights
from mtlkit.train.distributed import Distributed, init_distributed, teardown
from mtlkit.train.fsdp import FullyShardedDataParallel, gramian_methods, make_strategy
from mtlkit.weighting import get

WORLD = 2
TASKS = [
    Task("cls", "classification", 3),
    Task("reg", "regression", 1),
    Task("aux", "regression", 1),
]
#: float32 sums over shards and ranks, in another order than one process
RTOL, ATOL = 1e-5, 1e-6
#: options that make a method deterministic and comparable
OPTIONS: dict[str, dict[str, Any]] = {"pcgrad": {"seed": 3}}
LOSS_METHODS = ["uw", "dwa", "famo"]


def _split(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    targets = {
        "cls": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(),
        "reg": x[:, 2] * 2 + x[:, 3],
        "aux": x[:, 4] - x[:, 2],
    }
    return TensorSplit(x, targets, "train")


def _model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return build_model("hps", MLPEncoder(6, hidden=[15, 9]), TASKS)


def _method(name: str) -> Any:
    return get(name, **OPTIONS.get(name, {}))


def _grads(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, whole (a collective for sharded ones: every rank calls it)."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().clone()
    return out


def _update(method: Any, ctx: Distributed | None) -> dict[str, Any]:
    """One step on a global batch of 16 (ranks: 9 + 7 samples); the gradients written."""
    model = _model()
    x, y = _split(16, 0)[torch.arange(16)]
    if ctx is not None:
        strategy = FullyShardedDataParallel(ctx.rank, ctx.world_size)
        strategy.broadcast_model(model)
        method = strategy.wrap(method)
        rows = slice(0, 9) if ctx.rank == 0 else slice(9, 16)
        x, y = x[rows], {t: v[rows] for t, v in y.items()}
    method.bind([t.name for t in TASKS])
    out = model(x)
    losses: Any = {t.name: t.compute_loss(out[t.name], y[t.name]) for t in TASKS}
    if ctx is not None:
        losses = strategy.globalize(losses, len(x))
    record = method.backward(losses, model)
    return {"grads": _grads(model), "weights": record.weights}


def _fit(method: Any, ctx: Distributed | None, **options: Any) -> dict[str, Any]:
    """Two epochs with Adam; per-step weights, history, whole parameters, method state."""
    train, val = _split(51, 0), _split(13, 1)
    if ctx is None:
        train_loader: Any = TensorLoader(train, 2 * 8, shuffle=True)
        val_loader = TensorLoader(val, 4)
        strategy = None
    else:
        train_loader = ShardedLoader(train, 8, rank=ctx.rank, world_size=ctx.world_size)
        val_loader = TensorLoader(shard_split(val, ctx.rank, ctx.world_size), 4)  # 2 batches each
        strategy = FullyShardedDataParallel(ctx.rank, ctx.world_size)
    resume = options.pop("resume", None)
    stop_after = options.pop("stop_after", None)
    trainer = Trainer(
        _model(options.pop("model_seed", 0)),
        TASKS,
        method,
        optimizer="adam",
        optimizer_params={"lr": 0.01},
        epochs=2,
        device="cpu",
        progress=False,
        distributed=strategy,
        seed=0,
        **options,
    )
    weights: list[dict[str, float]] = []
    backward = trainer.weighting.backward

    def recording(*args: Any, **kwargs: Any) -> Any:
        record = backward(*args, **kwargs)
        weights.append(record.weights)
        return record

    trainer.weighting.backward = recording  # type: ignore[method-assign]
    fit = trainer.fit(train_loader, val_loader, resume=resume, stop_after=stop_after)
    whole, _ = trainer.strategy.full_state(trainer.model, trainer.optimizer)
    return {
        "weights": weights,
        "history": [{k: r[k] for k in ("train", "val")} for r in fit.history],
        "params": {k: v.clone() for k, v in whole.items()},
        "state": trainer.weighting.state_dict(),
    }


def _evaluate(ctx: Distributed | None, n: int) -> dict[str, Any]:
    """Metrics and predictions of the untrained model on a validation split of ``n`` samples,
    in batches of 4: under FSDP each rank takes its contiguous block (n = 9: 5 + 4 samples,
    2 and 1 batches; n = 1: rank 1 has no batch at all)."""
    val = _split(n, 2)
    strategy = None if ctx is None else FullyShardedDataParallel(ctx.rank, ctx.world_size)
    trainer = Trainer(
        _model(), TASKS, _method("ew"), device="cpu", progress=False, distributed=strategy
    )
    data = val if ctx is None else shard_split(val, ctx.rank, ctx.world_size)
    metrics = trainer.evaluate(TensorLoader(data, 4))
    return {"metrics": metrics, "outputs": trainer.predict(TensorLoader(data, 4))}


# ---------------------------------------------------------------------------- process harness


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _job(ctx: Distributed, out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "evaluations": {n: _evaluate(ctx, n) for n in (9, 1)},
        "updates": {n: _update(_method(n), ctx) for n in gramian_methods()},
        "fits": {n: _fit(_method(n), ctx) for n in [*LOSS_METHODS, "upgrad"]},
    }
    whole = _fit(_method("gradvac"), ctx, run_dir=out / "whole")
    _fit(_method("gradvac"), ctx, run_dir=out / "cut", stop_after=1)
    resumed = _fit(_method("gradvac"), ctx, run_dir=out / "cut", resume=out / "cut", model_seed=5)
    result["resume"] = {"whole": whole, "resumed": resumed}
    return result


def _resume_on_one_rank(ctx: Distributed, out: Path) -> dict[str, Any]:
    """The 2-rank run's sharded checkpoint resumed by a 1-rank FSDP job (DCP reads the
    2 saved chunks of each tensor into 1 shard): whole weights and Adam moments."""
    strategy = FullyShardedDataParallel(ctx.rank, ctx.world_size)
    trainer = Trainer(
        _model(7), TASKS, _method("gradvac"), optimizer="adam", device="cpu", distributed=strategy
    )
    trainer.resume(out / "whole")
    params, _ = strategy.full_state(trainer.model, trainer.optimizer)
    moments = {
        i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in entry.items()}
        for i, entry in trainer.optimizer.state_dict()["state"].items()
    }
    return {"params": params, "moments": moments, "epoch": trainer.epoch}


def _entry(rank: int, port: int, out: str, world: int = WORLD, job: str = "_job") -> None:
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
        ctx = init_distributed("gloo", timeout_s=60)
        result = globals()[job](ctx, Path(out))
    except Exception as err:  # reported to the test, which fails with it
        result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    teardown()


def _spawn(
    tmp_path: Path, deadline_s: float = 240.0, world: int = WORLD, job: str = "_job"
) -> list[Any]:
    context = mp.start_processes(
        _entry,
        args=(_free_port(), str(tmp_path), world, job),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail("the fsdp job did not finish in time")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if "error" in result:
            pytest.fail(f"rank {rank}: {result['error']}\n{result['trace']}")
    return results


def _close(a: Any, b: Any, where: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}/{k}", rtol, atol)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close(u, v, f"{where}[{i}]", rtol, atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rtol, abs=atol, nan_ok=True), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a} vs {b}"


@pytest.mark.slow
def test_fsdp_on_two_gloo_ranks(tmp_path: Path) -> None:
    ranks = _spawn(tmp_path)
    # evaluation with unequal batch counts per rank (2 vs 1, 1 vs 0): no hang, and the
    # metrics and predictions of the whole split, as one process computes them
    for n, zero in ranks[0]["evaluations"].items():
        _close(zero, ranks[1]["evaluations"][n], f"evaluation of {n}: rank 0 vs 1", 0.0, 0.0)
        reference = _evaluate(None, n)
        _close(zero, reference, f"evaluation of {n}: fsdp vs one process")
        assert len(zero["outputs"]["reg"]) == n
    # every Gramian method: the same update as one process on the global batch
    assert len(gramian_methods()) >= 10
    for name in gramian_methods():
        reference = _update(_method(name), None)
        zero, one = ranks[0]["updates"][name], ranks[1]["updates"][name]
        _close(zero, one, f"{name}: rank 0 vs 1", 0.0, 0.0)
        _close(zero, reference, f"{name}: fsdp vs one process")
        assert reference["grads"]["encoder.net.0.0.weight"].abs().max() > 0, name
    # loss-based methods (and UPGrad) over two epochs with Adam: same run as one process,
    # the method's state identical on both ranks
    for name, zero in ranks[0]["fits"].items():
        _close(zero, ranks[1]["fits"][name], f"{name}: rank 0 vs 1", 0.0, 0.0)
        reference = _fit(_method(name), None)
        _close(zero, reference, f"{name}: fsdp vs one process", 1e-4, 1e-5)
        assert len(zero["weights"]) == 8
    # resume from the gathered checkpoint: bitwise the uninterrupted run
    for rank in ranks:
        whole, resumed = rank["resume"]["whole"], rank["resume"]["resumed"]
        _close(resumed, {**whole, "weights": resumed["weights"]}, "resumed", 0.0, 0.0)
        assert len(resumed["weights"]) == 4  # the second epoch only
        assert resumed["weights"] == whole["weights"][4:]
    # the checkpoint is sharded: each rank wrote its own rows, safetensors and JSON only
    folder = tmp_path / "cut" / "checkpoint"
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    shards = [f for f in files if f.startswith("shards/")]
    assert len(shards) == WORLD, files
    assert set(files) - set(shards) == {"state.safetensors", "state.json", "manifest.json"}
    assert all(f.endswith(".safetensors") for f in shards)
    rows = []
    for name in shards:
        with safe_open(str(folder / name), framework="pt") as handle:
            key, keys = "model.encoder.net.0.0.weight", set(handle.keys())
            rows.append(handle.get_slice(key).get_shape()[0] if key in keys else 0)
            assert "optimizer.0.exp_avg" in keys  # Adam's moments, sharded too
    assert sorted(rows) == [7, 8]  # the 15-row layer: no rank wrote it whole
    # one process resumes a sharded checkpoint: whole weights and optimiser moments
    single = Trainer(_model(7), TASKS, _method("gradvac"), optimizer="adam", device="cpu")
    single.resume(tmp_path / "whole")
    whole = ranks[0]["resume"]["whole"]["params"]
    _close(dict(single.model.state_dict()), whole, "1-process resume", 0.0, 0.0)
    assert single.epoch == 2
    moments = single.optimizer.state_dict()["state"]
    assert {tuple(e["exp_avg"].shape) for e in moments.values()} >= {(15, 6), (9, 15)}
    # a 1-rank FSDP job resumes the 2-rank checkpoint: the same weights and moments
    (one,) = _spawn(tmp_path, 120.0, world=1, job="_resume_on_one_rank")
    assert one["epoch"] == 2
    _close(one["params"], whole, "1-rank fsdp resume", 0.0, 0.0)
    _close(one["moments"], moments, "1-rank fsdp resume: Adam moments", 0.0, 0.0)
    # one process reads the shards whole: the resumed run's final weights
    model = _model(7)
    load_model_weights(folder, model)
    _close(
        dict(model.state_dict()), ranks[0]["resume"]["resumed"]["params"], "1-process load", 0, 0
    )


# ---------------------------------------------------------------------------- in one process


@pytest.mark.parametrize(
    ("method", "option"),
    [
        (get("graddrop"), "graddrop"),
        (get("moco"), "moco"),
        (get("upgrad", jacobian="last_shared"), "'jacobian'"),
        (get("mgda", update_every=2), "'update_every'"),
    ],
)
def test_methods_that_need_more_than_the_gram_matrix_are_refused(method: Any, option: str) -> None:
    with pytest.raises(ConfigError, match=option) as err:
        FullyShardedDataParallel(0, 2).wrap(method)
    assert "train.strategy: ddp" in str(err.value)


def test_loss_based_and_gramian_methods_are_accepted() -> None:
    for name in ["ew", "uw", "famo", *gramian_methods()]:
        FullyShardedDataParallel(0, 2).wrap(_method(name))


def test_the_config_chooses_the_strategy() -> None:
    config = {"data": {"name": "multidigits"}, "train": {"strategy": "fsdp"}}
    assert parse_config(config).train.strategy == "fsdp"
    with pytest.raises(ConfigError, match=r"train\.strategy"):
        parse_config({**config, "train": {"strategy": "zero3"}})
    ctx = Distributed(1, 2)
    assert make_strategy(ctx, "ddp") is ctx
    assert make_strategy(None, "fsdp") is None
    sharded = make_strategy(ctx, "fsdp_sharded_heads")
    assert isinstance(sharded, FullyShardedDataParallel) and sharded.shard_heads
    assert sharded.rank == 1 and sharded.world_size == 2
