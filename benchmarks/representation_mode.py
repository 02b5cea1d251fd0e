"""Representation mode of every gradient method against EW, at one T, wall and CPU time.

python benchmarks/representation_mode.py 40 --repeats 12 [--methods upgrad mgda ...]

The ``mlp`` model of ``step_time.py``; each method built with ``jacobian="representation"``;
the configurations timed interleaved with EW (one step each in turn), medians; prints one JSON
object (the run's T, load average, wall and CPU time, and per method the wall and CPU ratios to
EW and milliseconds, and the quartiles of the per-round ratios to EW: the spread a single
ratio hides). It imports whichever mtlkit is on the path, so
``PYTHONPATH=<a checkout of an older commit>/src`` measures that commit with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

import mtlkit.weighting as weighting
from mtlkit.experiments.bench import (
    add_malloc_option,
    apply_malloc_option,
    build_bench_model,
    interleaved,
    mtlkit_step,
    paired_quartiles,
)

METHODS = [
    "upgrad",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl_g",
    "nash_mtl",
    "aligned_mtl",
    "dualproj",
    "fairgrad",
    "gradvac",
    "gradnorm",
    "config",
    "graddrop",
    "moco",
]


def _step(name: str, t: int) -> Callable[[], None]:
    model, x, y = build_bench_model("mlp", t)
    method = weighting.get(name) if name == "ew" else weighting.get(name, jacobian="representation")
    return mtlkit_step(method, model, x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    args = parser.parse_args()
    apply_malloc_option(parser, args)
    torch.set_num_threads(args.threads)
    steps = {name: _step(name, args.tasks) for name in ["ew", *args.methods]}
    started, started_cpu = time.perf_counter(), time.process_time()
    wall, cpu = interleaved(steps, args.repeats, args.warmup)
    base_wall, base_cpu = statistics.median(wall["ew"]), statistics.median(cpu["ew"])
    figures = {
        n: {
            "wall_ms": 1e3 * statistics.median(wall[n]),
            "cpu_ms": 1e3 * statistics.median(cpu[n]),
            "wall_ratio": statistics.median(wall[n]) / base_wall,
            "cpu_ratio": statistics.median(cpu[n]) / base_cpu,
            "cpu_ratio_quartiles": paired_quartiles(cpu[n], cpu["ew"]),
        }
        for n in steps
    }
    run_info = {
        "command": " ".join(["python", *sys.argv]),
        "mtlkit": os.path.dirname(weighting.__file__),
        "T": args.tasks,
        "threads": args.threads,
        "malloc": args.malloc,
        "load_average": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - started_cpu,
    }
    print(json.dumps({"run": run_info, "figures": figures}))


if __name__ == "__main__":
    main()
