"""Distributed benchmark: throughput of 1 against 2 processes, and the cost of the Jacobian
all-reduce against plain DDP (docs/distributed.md). Both ratios come from the same run.

Processes are started by the script (gloo on the CPU, one thread each); the model is an MLP with
T regression heads on synthetic data, so the numbers measure the training step only.

    python benchmarks/distributed.py --tasks 4 --steps 30 --batch 64

Reported:

- throughput ratio: samples per second of 2 processes (batch b each) over 1 process
  (batch b), for EW and for a gradient method (UPGrad by default); 2.0 is perfect scaling;
- communication ratio: the median time of the all-reduce of the T × P Jacobian over the
  all-reduce of the P gradient values that DDP performs, in the same process group; and the
  step time of the gradient method under mtlkit's engine over EW under torch's
  DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.data.sharding import ShardedLoader
from mtlkit.nn import build_model
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.tasks import Task
from mtlkit.train.distributed import init_distributed, teardown
from mtlkit.weighting import get


def _setup(args: argparse.Namespace, seed: int = 0) -> tuple[Any, list[Task], TensorSplit]:
    tasks = [Task(f"t{i}", "regression", 1) for i in range(args.tasks)]
    torch.manual_seed(seed)
    model = build_model("hps", MLPEncoder(args.features, hidden=args.hidden), tasks)
    n = args.batch * 2 * args.steps
    x = torch.randn(n, args.features)
    split = TensorSplit(x, {t.name: x[:, i % args.features] * 2 for i, t in enumerate(tasks)})
    return model, tasks, split


def _steps(model: Any, tasks: list[Task], method: Any, loader: Any, ctx: Any) -> list[float]:
    """Step times (s) of a plain training loop; the first steps are warm-up."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for x, y in loader:
        started = time.perf_counter()
        out = model(x)
        losses = {t.name: t.compute_loss(out[t.name], y[t.name], False) for t in tasks}
        if ctx is not None and method is not None:
            losses = ctx.globalize(losses, x.shape[0])
        opt.zero_grad()
        if method is None:  # torch DDP: the reducer averages ∇Σ L during backward
            sum(losses.values()).backward()  # type: ignore[union-attr]
        else:
            method.backward(losses, model)
        opt.step()
        times.append(time.perf_counter() - started)
    return times[3:]


def _single(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(1)
    out = {}
    for name in ("ew", args.method):
        model, tasks, split = _setup(args)
        loader = TensorLoader(split, args.batch, shuffle=True)
        out[name] = args.batch / statistics.median(_steps(model, tasks, get(name), loader, None))
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    ctx = init_distributed("gloo", timeout_s=120)
    result: dict[str, float] = {}
    for name in ("ew", args.method):
        model, tasks, split = _setup(args)
        loader = ShardedLoader(split, args.batch, rank=rank, world_size=world)
        times = _steps(model, tasks, ctx.wrap(get(name)), loader, ctx)
        result[name] = world * args.batch / statistics.median(times)
        result[f"{name}_step"] = statistics.median(times)
    model, tasks, split = _setup(args)
    ddp = DistributedDataParallel(model)
    loader = ShardedLoader(split, args.batch, rank=rank, world_size=world)
    result["ddp_step"] = statistics.median(_steps(ddp, tasks, None, loader, None))
    shared = sum(p.numel() for p in model.shared_parameters())
    total = sum(p.numel() for p in model.parameters())
    result["shared"], result["total"] = shared, total
    result["jacobian_reduce"] = _time_all_reduce(torch.randn(args.tasks, shared))
    result["gradient_reduce"] = _time_all_reduce(torch.randn(total))
    if rank == 0:
        torch.save(result, Path(folder) / "result.pt")
    teardown()


def _time_all_reduce(tensor: torch.Tensor, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch", type=int, default=64, help="per process")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--method", default="upgrad", help="the gradient method to time")
    args = parser.parse_args()
    single = _single(args)
    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
        s.close()
        mp.start_processes(_worker, args=(2, port, args, folder), nprocs=2, start_method="spawn")
        two = torch.load(Path(folder) / "result.pt", weights_only=False)
    print(f"MLP {args.features}→{args.hidden}, T={args.tasks}, batch {args.batch} per process")
    print(f"shared parameters P={int(two['shared'])}, all parameters {int(two['total'])}")
    for name in ("ew", args.method):
        ratio = two[name] / single[name]
        print(
            f"throughput {name}: 1 process {single[name]:.0f} samples/s, "
            f"2 processes {two[name]:.0f} samples/s, ratio {ratio:.2f}"
        )
    comm = two["jacobian_reduce"] / two["gradient_reduce"]
    print(
        f"all-reduce: Jacobian T×P {1e3 * two['jacobian_reduce']:.3f} ms, DDP gradient "
        f"{1e3 * two['gradient_reduce']:.3f} ms, ratio {comm:.2f}"
    )
    step = two[f"{args.method}_step"] / two["ddp_step"]
    print(
        f"step: {args.method} under mtlkit {1e3 * two[f'{args.method}_step']:.2f} ms, EW under "
        f"torch DDP {1e3 * two['ddp_step']:.2f} ms, ratio {step:.2f} "
        f"(EW under mtlkit {1e3 * two['ew_step']:.2f} ms)"
    )


if __name__ == "__main__":
    main()
