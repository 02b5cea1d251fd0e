"""Compiled vs eager: the step of gradient methods with a ``torch.compile``d encoder
(docs/benchmarks.md, "Compiled vs eager").

    python benchmarks/compile.py --compile inductor --models mlp --tasks 10 --threads 1

The models are benchmarks/step_time.py's (``build_bench_model``: an MLP 256→512×3 and a small
CNN, T linear heads). For each (model, T), an eager model and a copy whose encoder is compiled
(``torch.compile(encoder, backend=...)``; the heads stay eager) run every (method, mode) one
step each in turn, ``repeats`` times; medians of wall and CPU time are reported, with the ratio
compiled / eager and each side's ratio to its own equal-weighting (EW) step, all from the same
run. Compilation (the first steps) is timed apart. A compiled model is not hooked by the
Gramian engine: its Gramian comes from the explicit Jacobian (docs/weighting.md); and the
per-task backward cannot batch inductor's compiled backward, so it runs one pass per task there.

``--torchjd`` also times TorchJD's step (``mtl_backward`` + ``jac_to_grad``) with the same
aggregator on an eager copy of the model, in the same rounds, and reports mtlkit's compiled
step in each mode against it: what a user who compiles the encoder gets over TorchJD run as
its documentation shows.

Donated buffers are turned off (``torch._functorch.config.donated_buffer = False``): a gradient
method back-propagates through one graph more than once, which a backward compiled with donated
buffers refuses.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._functorch.config

from mtlkit.experiments.bench import (
    TORCHJD_AGGREGATORS,
    add_malloc_option,
    apply_malloc_option,
    build_bench_model,
    interleaved,
    mtlkit_step,
    torchjd_step,
)
from mtlkit.weighting import get


def _method(name: str, mode: str) -> Any:
    return get(name) if name == "ew" else get(name, jacobian=mode)


def _cell(args: argparse.Namespace, kind: str, tasks: int) -> list[dict[str, Any]]:
    eager, x, y = build_bench_model(kind, tasks)
    compiled = copy.deepcopy(eager)
    compiled.encoder = torch.compile(compiled.encoder, backend=args.compile)
    configs = [("ew", "shared")] + [
        (m, mode) for m in args.methods if m != "ew" for mode in args.modes
    ]
    steps: dict[tuple[str, str, str], Callable[[], None]] = {}
    first: dict[tuple[str, str, str], float] = {}
    for name, mode in configs:
        for side, model in (("eager", eager), ("compiled", compiled)):
            key = (name, mode, side)
            steps[key] = mtlkit_step(_method(name, mode), model, x, y)
            started = time.perf_counter()
            steps[key]()  # compiles on the compiled side's first step
            first[key] = time.perf_counter() - started
    if args.torchjd:
        from torchjd import aggregation

        reference = copy.deepcopy(eager)
        for name in dict.fromkeys(["ew", *args.methods]):
            if name in TORCHJD_AGGREGATORS:
                aggregator = getattr(aggregation, TORCHJD_AGGREGATORS[name])()
                steps[(name, "torchjd", "eager")] = torchjd_step(aggregator, reference, x, y)
                steps[(name, "torchjd", "eager")]()
    wall, cpu = interleaved(steps, args.repeats, args.warmup)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rows = []
    for name, mode in configs:
        e, c = (name, mode, "eager"), (name, mode, "compiled")
        rows.append(
            {
                "model": kind,
                "tasks": tasks,
                "method": name,
                "mode": mode if name != "ew" else "-",
                "eager_ms": 1e3 * med[e],
                "compiled_ms": 1e3 * med[c],
                "eager_cpu_ms": 1e3 * med_cpu[e],
                "compiled_cpu_ms": 1e3 * med_cpu[c],
                "compiled_over_eager": med[c] / med[e],
                "compiled_over_eager_cpu": med_cpu[c] / med_cpu[e],
                "eager_over_ew": med[e] / med[("ew", "shared", "eager")],
                "compiled_over_compiled_ew": med[c] / med[("ew", "shared", "compiled")],
                "eager_over_ew_cpu": med_cpu[e] / med_cpu[("ew", "shared", "eager")],
                "compiled_over_compiled_ew_cpu": med_cpu[c] / med_cpu[("ew", "shared", "compiled")],
                "first_compiled_step_s": first[c],
            }
        )
    for name, _ in configs:
        j = (name, "torchjd", "eager")
        if j not in steps:
            continue
        row: dict[str, Any] = {
            "model": kind,
            "tasks": tasks,
            "method": name,
            "mode": "torchjd",
            "eager_ms": 1e3 * med[j],
            "eager_cpu_ms": 1e3 * med_cpu[j],
            "eager_over_ew_cpu": med_cpu[j] / med_cpu[("ew", "shared", "eager")],
        }
        for mode in ["shared"] if name == "ew" else args.modes:
            compiled = med_cpu[(name, mode, "compiled")]
            row[f"torchjd_over_compiled_{mode}_cpu"] = med_cpu[j] / compiled
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compile",
        default="inductor",
        metavar="BACKEND",
        help="torch.compile backend of the compiled side (inductor, aot_eager, eager)",
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[10])
    parser.add_argument("--methods", nargs="+", default=["upgrad", "mgda", "pcgrad"])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--modes", nargs="+", default=["shared", "representation"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--torchjd", action="store_true", help="time TorchJD beside (pip install 'mtlkit[bench]')"
    )
    add_malloc_option(parser)
    args = parser.parse_args()
    apply_malloc_option(parser, args)
    if args.torchjd:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            parser.error("--torchjd needs TorchJD: pip install 'mtlkit[bench]'")
    torch.set_num_threads(args.threads)
    torch._functorch.config.donated_buffer = False  # see the module docstring
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = [r for kind in args.models for t in args.tasks for r in _cell(args, kind, t)]
    load = os.getloadavg()
    header = {
        "backend": args.compile,
        "threads": args.threads,
        "malloc": args.malloc,
        "repeats": args.repeats,
        "load_average": [round(v, 2) for v in load],
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps({"run": header, "rows": rows}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    print(
        "model  T  method  mode            eager ms (cpu)    compiled ms (cpu)   "
        "compiled/eager (cpu)  eager/EW (cpu)  compiled/EW (cpu)  first compiled step s"
    )
    for r in rows:
        if r["mode"] == "torchjd":
            against = ", ".join(
                f"{k[len('torchjd_over_compiled_') : -len('_cpu')]} {v:.2f}"
                for k, v in r.items()
                if k.startswith("torchjd_over_compiled_")
            )
            print(
                f"{r['model']:<5} {r['tasks']:>2}  {r['method']:<7} torchjd (eager)  "
                f"{r['eager_ms']:7.2f} ({r['eager_cpu_ms']:7.2f})  eager/EW cpu "
                f"{r['eager_over_ew_cpu']:5.2f}; TorchJD / mtlkit compiled, cpu: {against}"
            )
            continue
        print(
            f"{r['model']:<5} {r['tasks']:>2}  {r['method']:<7} {r['mode']:<15} "
            f"{r['eager_ms']:7.2f} ({r['eager_cpu_ms']:7.2f})  "
            f"{r['compiled_ms']:7.2f} ({r['compiled_cpu_ms']:7.2f})   "
            f"{r['compiled_over_eager']:5.2f} ({r['compiled_over_eager_cpu']:5.2f})      "
            f"{r['eager_over_ew']:5.2f} ({r['eager_over_ew_cpu']:5.2f})  "
            f"{r['compiled_over_compiled_ew']:5.2f} ({r['compiled_over_compiled_ew_cpu']:5.2f})  "
            f"{r['first_compiled_step_s']:6.1f}"
        )


if __name__ == "__main__":
    main()
