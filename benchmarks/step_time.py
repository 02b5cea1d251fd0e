"""Step time of every weighting method relative to EW (see docs/benchmarks.md, "Step time").

python benchmarks/step_time.py --tasks 2 5 10 --methods upgrad mgda --threads 1
"""

from __future__ import annotations

import argparse

from mtlkit.experiments.bench import MODELS, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--methods", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["shared", "representation"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torchjd", action="store_true")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    run_bench(
        args.tasks,
        args.methods,
        models=args.models,
        modes=args.modes,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        torchjd=not args.no_torchjd,
        memory=args.memory,
    )


if __name__ == "__main__":
    main()
