"""Dense prediction on procedural shape scenes: one model per task (STL) against one MTL model.

Tasks: semantic segmentation (background, circle, square, triangle), depth and surface
normals of the scenes of :mod:`mtlkit.data.shapes`; a small ResNet without pooling is the
shared encoder and each task has a ``dense`` head (hard parameter sharing, equal weights).
Prints per-task test metrics for STL and MTL and Δm. A few minutes on 2 CPU cores::

    python examples/dense_scenes.py [--epochs 6] [--n-train 512] [--out runs/dense-scenes]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from mtlkit.config import parse_config
from mtlkit.experiments.demo import print_table, run_comparison


def scenes_config(
    epochs: int = 6, n_train: int = 512, size: int = 32, widths: tuple[int, ...] = (16, 32, 64)
) -> dict[str, Any]:
    """The run config: dense_scenes data, resnet (pool: false) + dense heads, EW, Adam."""
    head = {"out_size": [size, size], "hidden": [32]}
    n_eval = max(16, n_train // 4)
    return {
        "name": "dense-scenes",
        "seed": 0,
        "data": {
            "name": "dense_scenes",
            "batch_size": 32,
            "params": {
                "n_train": n_train,
                "n_val": n_eval,
                "n_test": n_eval,
                "height": size,
                "width": size,
            },
        },
        "tasks": [
            {"name": "segmentation", "head_params": head},
            {"name": "depth", "head_params": head},
            {"name": "normals", "head_params": head},
        ],
        "model": {
            "architecture": "hps",
            "encoder": {"name": "resnet", "params": {"widths": list(widths), "blocks": 1}},
        },
        "weighting": {"name": "ew"},
        "optimizer": {"name": "adam", "params": {"lr": 0.003}},
        "train": {"epochs": epochs, "monitor": "loss"},
    }


def run(
    epochs: int = 6,
    n_train: int = 512,
    size: int = 32,
    out: str | Path = "runs/dense-scenes",
    progress: bool = True,
    widths: tuple[int, ...] = (16, 32, 64),
) -> dict[str, Any]:
    """Train STL and MTL, print the table, return the results (see ``run_comparison``)."""
    console = Console()
    config = parse_config(scenes_config(epochs, n_train, size, widths))
    results = run_comparison(config, Path(out), progress=progress, console=console)
    print_table(results, console)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", default="runs/dense-scenes")
    args = parser.parse_args(argv)
    run(args.epochs, args.n_train, args.size, args.out)


if __name__ == "__main__":
    main()
