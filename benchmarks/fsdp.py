"""FSDP against DDP benchmark: step time, communication and memory of an exact Gramian method
(UPGrad by default) under ``train.strategy: ddp`` and ``train.strategy: fsdp``
(docs/distributed.md), on an MLP encoder of growing width and T regression heads.

    python benchmarks/fsdp.py --hidden 256 1024 2048 --tasks 2 10 --steps 20

Two processes per measurement, started by the script (gloo with one thread each on the CPU;
nccl, one GPU each, when CUDA is available and ``--backend`` is not given). Each (width, T,
strategy) gets a fresh pair of processes, so memory high-water marks do not carry over.

Reported per rank-0 step (median of ``--steps`` steps after ``--warmup``):

- wall: ``time.perf_counter``; CPU: ``time.process_time`` (all threads of the process, gloo's
  included); on a GPU the step ends with ``torch.cuda.synchronize``;
- communication, *counted*: every call of ``torch.distributed`` all_reduce, broadcast,
  all_gather_single / all_gather_into_tensor and reduce_scatter_single /
  reduce_scatter_tensor made during the timed steps is wrapped and its full tensor size added
  up (all-reduce and broadcast: the tensor; all-gather: the gathered output; reduce-scatter:
  the input). "sent" turns that into the bytes each rank sends under ring algorithms
  (all-reduce 2(R−1)/R·n, all-gather and reduce-scatter (R−1)/R·n, broadcast n from the root);
- memory, *measured*: growth of the process's peak resident set (``ru_maxrss``) from just
  after the process group starts to the end of the timed steps, the larger of the two ranks;
  on a GPU also ``torch.cuda.max_memory_allocated``. The model is built after the baseline,
  so the growth covers parameters, gradients, Adam state, activations and buffers. glibc's
  mmap threshold is fixed at 64 KiB in the workers (``MALLOC_MMAP_THRESHOLD_``, as in
  tests/train/test_evaluation_memory.py) so that large freed blocks go back to the system
  and the peak measures live memory, not what the allocator keeps cached;
  ``--allocator-cache`` leaves glibc's default (the peak then depends on the allocation
  pattern as much as on what is live).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlkit.data.sharding import ShardedLoader
from mtlkit.train.distributed import init_distributed, teardown
from mtlkit.train.fsdp import make_strategy
from mtlkit.weighting import get

sys.path.insert(0, str(Path(__file__).parent))
from distributed import _setup  # the DDP benchmark's model and data

#: collective → (the argument whose size counts, bytes sent per rank per byte at world size R)
COLLECTIVES: dict[str, tuple[int | str, Callable[[int], float]]] = {
    "all_reduce": (0, lambda r: 2 * (r - 1) / r),
    "broadcast": (0, lambda r: 1.0),
    "all_gather_single": (0, lambda r: (r - 1) / r),
    "all_gather_into_tensor": (0, lambda r: (r - 1) / r),
    "reduce_scatter_single": ("input", lambda r: (r - 1) / r),
    "reduce_scatter_tensor": (1, lambda r: (r - 1) / r),
}


class Traffic:
    """Counts the bytes of the collectives called while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def install(self) -> None:
        for name, (arg, _) in COLLECTIVES.items():
            original = getattr(dist, name, None)
            if original is not None:
                setattr(dist, name, self._wrap(name, arg, original))

    def _wrap(self, name: str, arg: int | str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                tensor = args[arg] if isinstance(arg, int) and len(args) > arg else None
                if tensor is None:
                    names = ("output_tensor", "output", "tensor") if arg == 0 else ("input",)
                    names = (arg,) if isinstance(arg, str) else names
                    tensor = next((kwargs[k] for k in names if k in kwargs), None)
                if isinstance(tensor, torch.Tensor):
                    self.bytes[name] += tensor.numel() * tensor.element_size()
                    self.calls[name] += 1
            return original(*args, **kwargs)

        return counted

    def sent(self, world: int) -> float:
        return sum(n * COLLECTIVES[k][1](world) for k, n in self.bytes.items())


def _peak_rss() -> int:
    """The process's peak resident set in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _worker(
    rank: int, world: int, port: int, args: argparse.Namespace, job: dict[str, Any], folder: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.setdefault("LOCAL_RANK", str(rank))
    torch.set_num_threads(1)
    traffic = Traffic()
    traffic.install()
    ctx = init_distributed(args.backend, timeout_s=300)
    device = torch.device(f"cuda:{rank}") if args.backend == "nccl" else torch.device("cpu")
    cuda = device.type == "cuda"
    base_rss = _peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    setup = argparse.Namespace(
        tasks=job["tasks"],
        features=args.features,
        hidden=[job["hidden"]] * args.layers,
        batch=args.batch,
        steps=args.warmup + args.steps,
    )
    model, tasks, split = _setup(setup)
    model.to(device)
    shared = sum(p.numel() for p in model.shared_parameters())
    strategy = make_strategy(ctx, job["strategy"])
    assert strategy is not None
    strategy.broadcast_model(model)
    method = strategy.wrap(get(args.method))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = ShardedLoader(split, args.batch * world, rank=rank, world_size=world)
    walls, cpus = [], []
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), {k: v.to(device) for k, v in y.items()}
        strategy.barrier()  # the ranks start each step together
        traffic.on = step >= args.warmup
        wall, cpu = time.perf_counter(), time.process_time()
        out = model(x)
        losses = {t.name: t.compute_loss(out[t.name], y[t.name], False) for t in tasks}
        losses = strategy.globalize(losses, x.shape[0])
        opt.zero_grad()
        method.backward(losses, model)
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        traffic.on = False
        if step >= args.warmup:
            walls.append(wall)
            cpus.append(cpu)
    result = {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "bytes": sum(traffic.bytes.values()) / args.steps,
        "sent": traffic.sent(world) / args.steps,
        "calls": sum(traffic.calls.values()) / args.steps,
        "rss": _peak_rss() - base_rss,
        "cuda": torch.cuda.max_memory_allocated(device) if cuda else 0,
        "shared": shared,
    }
    torch.save(result, Path(folder) / f"rank{rank}.pt")
    teardown()


def _run(args: argparse.Namespace, job: dict[str, Any]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
        s.close()
        mp.start_processes(
            _worker, args=(2, port, args, job, folder), nprocs=2, start_method="spawn"
        )
        ranks = [torch.load(Path(folder) / f"rank{r}.pt") for r in range(2)]
    out = dict(ranks[0])
    out["rss"] = max(r["rss"] for r in ranks)
    out["cuda"] = max(r["cuda"] for r in ranks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--layers", type=int, default=2, help="hidden layers of that width")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="per process")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--method", default="upgrad", help="a Gram-matrix method")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    parser.add_argument(
        "--allocator-cache",
        action="store_true",
        help="keep glibc's default mmap threshold (peak RSS then counts cached free memory)",
    )
    args = parser.parse_args()
    if not args.allocator_cache:  # read by glibc when each spawned worker starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    if args.backend is None:
        args.backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    cuda = args.backend == "nccl"
    print(
        f"{args.method}, 2 processes ({args.backend}), MLP {args.features}→{args.layers}×width, "
        f"batch {args.batch} per process, Adam; median of {args.steps} steps after "
        f"{args.warmup}; glibc mmap threshold "
        f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}"
    )
    header = (
        "| width | T | shared P | strategy | wall ms | CPU ms | counted MB/step | sent MB/step "
        "| collectives/step | peak RSS growth MB |" + (" CUDA peak MB |" if cuda else "")
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for hidden in args.hidden:
        for tasks in args.tasks:
            for strategy in ("ddp", "fsdp"):
                r = _run(args, {"hidden": hidden, "tasks": tasks, "strategy": strategy})
                row = (
                    f"| {hidden} | {tasks} | {int(r['shared']):,} | {strategy} "
                    f"| {1e3 * r['wall']:.1f} | {1e3 * r['cpu']:.1f} | {r['bytes'] / 1e6:.2f} "
                    f"| {r['sent'] / 1e6:.2f} | {r['calls']:.0f} | {r['rss'] / 1e6:.1f} |"
                )
                print(row + (f" {r['cuda'] / 1e6:.1f} |" if cuda else ""), flush=True)


if __name__ == "__main__":
    main()
