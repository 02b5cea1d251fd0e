"""Step time and peak memory of every weighting method relative to EW (docs/benchmarks.md).

python benchmarks/step_time.py --tasks 2 5 10 40 100 --threads 1 --json step_time.json

Each (model, T) cell times its configurations interleaved (one step each in turn), medians of
wall and CPU (process) time, ratios to the EW step of the same cell
(:func:`mtlkit.experiments.bench.run_bench`). TorchJD runs side by side when it is installed.
``--json`` writes the whole table: one object per figure with the run's command, threads,
the load average when its cell ended, wall and CPU time, and the run's own wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mtlkit.experiments.bench import (
    DEFAULT_MODELS,
    MODELS,
    add_malloc_option,
    apply_malloc_option,
    run_bench,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 40, 100])
    parser.add_argument("--methods", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["shared", "representation"])
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torchjd", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--json", type=Path, default=None, help="write the whole table here")
    args = parser.parse_args()
    apply_malloc_option(parser, args)
    command = " ".join(["python", *sys.argv])
    started, started_cpu = time.perf_counter(), time.process_time()
    rows = run_bench(
        args.tasks,
        args.methods,
        models=args.models,
        modes=args.modes,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        torchjd=False if args.no_torchjd else None,
        memory=not args.no_memory,
    )
    run: dict[str, Any] = {
        "command": command,
        "threads": args.threads,
        "malloc": args.malloc,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - started_cpu,
    }
    print(
        f"{command}: threads {args.threads}, malloc {args.malloc}, load average "
        f"{', '.join(f'{v:.2f}' for v in run['load_average_end'])}, "
        f"wall {run['wall_s']:.0f} s, CPU {run['cpu_s']:.0f} s"
    )
    if args.json is not None:
        figures = [{**row, "command": command, "threads": args.threads} for row in rows]
        args.json.write_text(json.dumps({"run": run, "figures": figures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
