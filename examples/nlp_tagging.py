"""Multi-layer tagging of Turkish: UPOS, XPOS and dependency relations on one token encoder.

Data: the Turkish Web Treebank shipped by the ``turkish-treebanks`` package
(``mtlkit.data.treebank``; extra ``mtlkit[datasets]``). Each task is trained alone (single-task
learning, STL), then all three together on one shared BiLSTM with equal weights (MTL, hard
parameter sharing). Models are selected on the validation split; the table shows test token
accuracy and macro-F1 per task, and Δm of MTL over STL (positive: MTL is better).

Run: python examples/nlp_tagging.py [--max-sentences 2000] [--epochs 8]
(a few minutes on 2 CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from mtlkit import Trainer, build_model
from mtlkit.data.conll import TextBundle
from mtlkit.data.treebank import turkish_treebank
from mtlkit.nn import ENCODERS
from mtlkit.tasks import delta_m

ENCODER = {"embedding_dim": 64, "hidden": 64, "dropout": 0.2}


def load(
    max_sentences: int | None = 2000, max_length: int | None = 40, seed: int = 0
) -> TextBundle:
    """The treebank's three tagging tasks on a random subset (sentences of ≤ max_length words)."""
    return turkish_treebank(
        seed=seed, max_sentences=max_sentences, max_length=max_length, encoder=ENCODER
    )


def train_and_test(
    bundle: TextBundle,
    tasks: list[str],
    epochs: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> dict[str, dict[str, float]]:
    """Train an HPS model on ``tasks`` (EW), select on validation, return test metrics."""
    data = bundle.select_tasks(tasks)
    torch.manual_seed(seed)
    name, options = data.encoder
    model = build_model("hps", ENCODERS.build(name, **options), data.tasks)
    trainer = Trainer(
        model,
        data.tasks,
        epochs=epochs,
        optimizer_params={"lr": lr},
        monitor="mean/token_accuracy",
        device="cpu",
        seed=seed,
        progress=False,
    )
    trainer.fit(data.loader("train", batch_size), data.loader("val", 256))
    results = trainer.evaluate(data.loader("test", 256))
    return {t: {k: v for k, v in m.items() if k != "loss"} for t, m in results.items()}


def compare(
    bundle: TextBundle, epochs: int = 4, seed: int = 0, batch_size: int = 32
) -> dict[str, Any]:
    """STL for each task, then MTL on all; per-task test metrics and Δm (MTL over STL)."""
    names = [t.name for t in bundle.tasks if not t.auxiliary]
    stl = {}
    for name in names:
        stl.update(train_and_test(bundle, [name], epochs, seed, batch_size))
    mtl = train_and_test(bundle, names, epochs, seed, batch_size)
    return {"stl": stl, "mtl": mtl, "delta_m": delta_m(mtl, stl)}


def report(result: dict[str, Any]) -> str:
    """The comparison as a text table."""
    lines = [f"{'task':<8} {'metric':<16} {'STL':>8} {'MTL':>8}"]
    for task, metrics in result["stl"].items():
        for metric, value in metrics.items():
            lines.append(f"{task:<8} {metric:<16} {value:8.4f} {result['mtl'][task][metric]:8.4f}")
    lines.append(f"Δm (MTL over STL): {result['delta_m']:+.2f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-sentences", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="small models: 1 is fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load(args.max_sentences, args.max_length, args.seed)
    print(f"Turkish treebank: {bundle.info['sentences']} sentences, {bundle.info['tokens']} words")
    print(report(compare(bundle, args.epochs, args.seed)))


if __name__ == "__main__":
    main()
