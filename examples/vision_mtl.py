"""Classification + detection + segmentation on one backbone, MTL against STL.

A procedural "shapes" dataset (:mod:`mtlkit.data.shapes`) is written once to disk in COCO
format (images as PNG, masks as RLE) and read back with the COCO loader. Each image gives
three tasks:

- ``labels``: which of the categories (circle, square, triangle) appear (multi-label);
- ``detection``: the objects' boxes and categories (FCOS head; COCO mAP@[.5:.95], mAP@.5);
- ``segmentation``: the category of every pixel (mIoU, pixel accuracy).

The multi-task model is a small ResNet (feature map of stride 4) shared by a pooled
multi-label head, an FCOS head and a dense head, trained with any loss-balancing method
(``--method``, equal weights by default). Each single-task baseline is the same encoder with
one head. Every model gets the same epochs, optimiser, batches and seed, and is evaluated on
the test split after its last epoch (no selection on the test split), so the comparison is
like for like. Δm (Maninis et al. 2019) summarises the relative change of MTL over STL.

Run: python examples/vision_mtl.py [--root DIR] [--epochs N] [--method NAME]
(about 2 minutes on 2 CPU cores with the defaults; the first run also writes the
dataset, under half a minute).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from mtlkit import Trainer, build_model
from mtlkit.data.coco import coco_shapes
from mtlkit.nn.encoders import ENCODERS
from mtlkit.tasks import delta_m
from mtlkit.weighting import get

#: the metrics compared, per task
REPORTED = {
    "labels": ["multilabel_map", "macro_f1_multilabel"],
    "detection": ["map", "map50"],
    "segmentation": ["miou", "pixel_accuracy"],
}


def train_and_test(
    bundle: Any,
    task_names: list[str],
    method: str,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
) -> tuple[dict[str, dict[str, float]], float]:
    """Train one model for ``task_names`` on the train split; test metrics and seconds."""
    data = bundle.select_tasks(task_names)
    torch.manual_seed(seed)
    encoder = ENCODERS.build(data.encoder[0], **data.encoder[1])
    model = build_model("hps", encoder, data.tasks)
    trainer = Trainer(
        model,
        data.tasks,
        get(method),
        epochs=epochs,
        seed=seed,
        device="cpu",
        optimizer="adam",
        optimizer_params={"lr": lr},
        scheduler="cosine",
        progress=False,
    )
    started = time.perf_counter()
    trainer.fit(data.loader("train", batch_size))
    seconds = time.perf_counter() - started
    results = trainer.evaluate(data.loader("test", 64))
    return {t: {m: results[t][m] for m in REPORTED[t]} for t in task_names}, seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="~/.cache/mtlkit/coco_shapes_example")
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-val", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--method", default="ew")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    bundle = coco_shapes(
        args.root, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed
    )
    tasks = [t.name for t in bundle.tasks]
    common = (args.method, args.epochs, args.seed, args.batch_size, args.lr)
    mtl, mtl_seconds = train_and_test(bundle, tasks, *common)
    stl: dict[str, dict[str, float]] = {}
    stl_seconds = 0.0
    for name in tasks:
        result, seconds = train_and_test(bundle, [name], "ew", *common[1:])
        stl.update(result)
        stl_seconds += seconds

    print(
        f"shapes, COCO format: {len(bundle.train)} train / {len(bundle.test)} test images, "
        f"{args.epochs} epochs, MTL method '{args.method}'"
    )
    print(f"{'task':<13}{'metric':<21}{'STL':>8}{'MTL':>8}")
    for task, metrics in REPORTED.items():
        for m in metrics:
            print(f"{task:<13}{m:<21}{stl[task][m]:>8.3f}{mtl[task][m]:>8.3f}")
    # a relative change needs a non-zero baseline: such metrics are named and left out of Δm
    base = {t: {m: v for m, v in stl[t].items() if math.isfinite(v) and v != 0} for t in tasks}
    skipped = [f"{t}/{m}" for t in tasks for m in stl[t] if m not in base[t]]
    base = {t: ms for t, ms in base.items() if ms}
    per_task = {t: delta_m({t: mtl[t]}, {t: ms}) for t, ms in base.items()}
    overall = delta_m(mtl, base) if base else math.nan
    if skipped:
        print(f"left out of Δm (STL baseline 0): {', '.join(skipped)}")
    print("Δm per task: " + ", ".join(f"{t} {v:+.1f}%" for t, v in per_task.items()))
    print(
        f"Δm overall: {overall:+.1f}% (one seed: no interval, so no verdict; "
        "`mtlkit compare --seeds 3` gives one); "
        f"training time: MTL {mtl_seconds:.0f} s, STL {stl_seconds:.0f} s (3 models)"
    )
    return {
        "stl": stl,
        "mtl": mtl,
        "delta_m": overall,
        "delta_m_per_task": per_task,
        "left_out": skipped,
        "seconds": {"mtl": mtl_seconds, "stl": stl_seconds},
    }


if __name__ == "__main__":
    main()
