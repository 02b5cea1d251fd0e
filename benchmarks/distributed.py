"""Distributed benchmark: throughput of 1 against 2 processes, and the cost of the Jacobian
all-reduce against plain DDP (docs/distributed.md). Both ratios come from the same run.

Processes are started by the script (gloo on the CPU, one thread each); the model is an MLP with
T regression heads on synthetic data, so the numbers measure the training step only.

    python benchmarks/distributed.py --tasks 4 --steps 30 --batch 64

Reported:

- throughput ratio: samples per second of 2 processes (batch b each) over 1 process
  (batch b), for EW and for a gradient method (UPGrad by default); 2.0 is perfect scaling;
- communication alone: the median time of the all-reduce of the T × P Jacobian over the
  all-reduce of the P gradient values that DDP performs, in the same process group;
- per step, against EW under torch's DistributedDataParallel, one step of each configuration
  in turn (load moves them together): wall and CPU time, and the bytes this rank sends into
  all-reduces (DDP's buckets counted by a comm hook, mtlkit's by wrapping
  ``torch.distributed.all_reduce``), for EW under mtlkit and the gradient method with its
  reductions overlapped (docs/distributed.md, "Overlap": J in one piece at these sizes),
  overlapped with J in 2 row chunks (a bucket of half of J), and blocking.
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
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from mtlkit.data import TensorLoader, TensorSplit
from mtlkit.data.sharding import ShardedLoader
from mtlkit.nn import build_model
from mtlkit.nn.encoders import MLPEncoder
from mtlkit.tasks import Task
from mtlkit.train.distributed import DistributedWeighting, init_distributed, teardown
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


class _Bytes:
    """Bytes this rank sends into all-reduces: torch.distributed.all_reduce calls (mtlkit's
    wrapper, sync or async) and DDP's buckets (a counting comm hook)."""

    def __init__(self) -> None:
        self.total = 0
        self._all_reduce = dist.all_reduce

    def __enter__(self) -> _Bytes:
        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.total += tensor.numel() * tensor.element_size()
            return self._all_reduce(tensor, *args, **kwargs)

        dist.all_reduce = counting  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        dist.all_reduce = self._all_reduce

    def ddp_hook(self) -> Any:
        """A DDP comm hook (no annotations: DDP checks them) that sends the buckets through
        torch.distributed.all_reduce (``allreduce_hook``), where they are counted."""

        def hook(state, bucket):  # type: ignore[no-untyped-def]
            return default_hooks.allreduce_hook(state, bucket)

        return hook


def _half_jacobian(args: argparse.Namespace) -> int:
    """A bucket of half the Jacobian's bytes: J in 2 row chunks (docs/distributed.md)."""
    model, _, _ = _setup(args)
    shared = sum(p.numel() for p in model.shared_parameters())
    return max(1, args.tasks * shared * 4 // 2)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, folder: str) -> None:
    """Every configuration, one step each in turn (load moves them together): EW under
    torch's DDP, EW under mtlkit, the gradient method with overlapped and with blocking
    reductions. Medians of wall and CPU time per step, and bytes all-reduced per step."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    ctx = init_distributed("gloo", timeout_s=300)
    configs: dict[str, tuple[Any, Any, Any]] = {}  # name → (model, method or None, optimizer)
    counters: dict[str, _Bytes] = {}
    for name, method in (
        ("ddp ew", None),
        ("mtlkit ew", DistributedWeighting(get("ew"), ctx)),
        (f"{args.method} overlapped", DistributedWeighting(get(args.method), ctx, overlap=True)),
        (
            f"{args.method} chunked",
            DistributedWeighting(get(args.method), ctx, bucket_bytes=_half_jacobian(args)),
        ),
        (f"{args.method} blocking", DistributedWeighting(get(args.method), ctx, overlap=False)),
    ):
        model, tasks, split = _setup(args)
        counters[name] = _Bytes()
        if method is None:
            model = DistributedDataParallel(model)
            model.register_comm_hook(None, counters[name].ddp_hook())
        configs[name] = (model, method, torch.optim.SGD(model.parameters(), lr=0.01))
    batches = list(ShardedLoader(split, args.batch, rank=rank, world_size=world))
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    for step in range(args.steps):
        x, y = batches[step % len(batches)]
        for name, (model, method, opt) in configs.items():
            dist.barrier()
            counter = counters[name]
            before = counter.total
            w0, c0 = time.perf_counter(), time.process_time()
            with counter:
                out = model(x)
                losses = {t.name: t.compute_loss(out[t.name], y[t.name], False) for t in tasks}
                opt.zero_grad()
                if method is None:  # torch DDP: the reducer averages ∇Σ L during backward
                    sum(losses.values()).backward()  # type: ignore[union-attr]
                else:
                    method.backward(ctx.globalize(losses, x.shape[0]), model)
                opt.step()
            if step >= 3:  # warm-up
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
            if step == 3:  # DDP's first steps build its buckets
                counter.per_step = counter.total - before  # type: ignore[attr-defined]
    result: dict[str, Any] = {
        name: {
            "wall": statistics.median(wall[name]),
            "cpu": statistics.median(cpu[name]),
            "bytes": counters[name].per_step,  # type: ignore[attr-defined]
        }
        for name in configs
    }
    model, tasks, split = _setup(args)
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
    load = os.getloadavg()
    print(
        f"MLP {args.features}→{args.hidden}, T={args.tasks}, batch {args.batch} per process, "
        f"{args.steps} steps, 1 thread per process, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}"
    )
    print(f"shared parameters P={int(two['shared'])}, all parameters {int(two['total'])}")
    for name, key in (("ew", "mtlkit ew"), (args.method, f"{args.method} overlapped")):
        both = 2 * args.batch / two[key]["wall"]
        print(
            f"throughput {name}: 1 process {single[name]:.0f} samples/s, 2 processes "
            f"{both:.0f} samples/s, ratio {both / single[name]:.2f}"
        )
    comm = two["jacobian_reduce"] / two["gradient_reduce"]
    print(
        f"all-reduce alone: Jacobian T×P {1e3 * two['jacobian_reduce']:.3f} ms, DDP gradient "
        f"{1e3 * two['gradient_reduce']:.3f} ms, ratio {comm:.2f}"
    )
    base = two["ddp ew"]
    print("per step (rank 0)         wall ms   cpu ms   wall/DDP  cpu/DDP  KiB sent  bytes/DDP")
    names = ("overlapped", "chunked", "blocking")
    for name in ("ddp ew", "mtlkit ew", *(f"{args.method} {n}" for n in names)):
        r = two[name]
        wall, cpu, sent = r["wall"], r["cpu"], r["bytes"]
        print(
            f"{name:<24} {1e3 * wall:8.2f} {1e3 * cpu:8.2f} {wall / base['wall']:9.2f}"
            f" {cpu / base['cpu']:8.2f} {sent / 1024:9.1f} {sent / base['bytes']:9.2f}"
        )


if __name__ == "__main__":
    main()
