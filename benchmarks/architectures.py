"""Architecture benchmark: every architecture with equal weights against single-task models.

On both built-in datasets (MultiDigits and the census-style GSS table), for 3 seeds, trains one
single-task (STL) model per task and one model per architecture with equal weighting (EW), all
with the same encoder, optimiser and epochs, selected on validation; prints per-task test
metrics (mean ± std), Δm ± std against STL and the training time per run, as a Markdown table
ready for ``docs/benchmarks.md``. Runs are reused when the script is re-run with the same
``--out``, so an interrupted benchmark resumes.

    python benchmarks/architectures.py --out runs/bench-architectures
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from mtlkit.config import parse_config
from mtlkit.experiments.compare import run_compare, to_markdown
from mtlkit.nn import ARCHITECTURES

CONFIGS: dict[str, dict[str, Any]] = {
    "multidigits": {
        "name": "multidigits",
        "seed": 0,
        "data": {
            "name": "multidigits",
            "params": {"seed": 0, "n_train": 1500, "n_val": 300, "n_test": 600},
            "batch_size": 64,
        },
        "model": {
            "architecture": "hps",
            "encoder": {
                "name": "cnn",
                "params": {"channels": [16, 32], "out_features": 64, "pool_size": [2, 4]},
            },
        },
        "weighting": {"name": "ew"},
        "optimizer": {"name": "adam", "params": {"lr": 0.003}},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 8, "monitor": "mean/accuracy", "log_every": 50},
    },
    "gss": {
        "name": "gss",
        "seed": 0,
        "data": {"name": "gss", "params": {"seed": 0, "max_rows": 6000}, "batch_size": 256},
        "model": {
            "architecture": "hps",
            "encoder": {"name": "mlp", "params": {"hidden": [32, 16], "dropout": 0.1}},
        },
        "weighting": {"name": "ew"},
        "optimizer": {"name": "adam", "params": {"lr": 0.002}},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 5, "monitor": "mean/auroc", "log_every": 50},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--architectures", nargs="+", default=ARCHITECTURES.names())
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-architectures"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    for name in args.datasets:
        raw = dict(CONFIGS[name])
        if args.epochs is not None:
            raw["train"] = {**raw["train"], "epochs": args.epochs}
        config = parse_config(raw)
        started, started_cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()
        summary = run_compare(
            config,
            args.out / name,
            methods=["ew"],
            architectures=args.architectures,
            seeds=args.seeds,
            console=console,
        )
        print(f"### {name}\n")
        print(to_markdown(summary))
        print(
            f"{name}: wall {time.perf_counter() - started:.0f} s, CPU (this process) "
            f"{time.process_time() - started_cpu:.0f} s, threads {args.threads}, load average "
            f"{load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
        )


if __name__ == "__main__":
    main()
