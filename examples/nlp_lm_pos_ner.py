"""Does a language-modelling auxiliary task help tagging? UPOS + XPOS (+ NER) on one encoder.

On the built-in Turkish treebank (``mtlkit.data.treebank``), one shared token encoder is
trained twice with equal weights: on UPOS + XPOS tagging alone, and on UPOS + XPOS plus an
auxiliary language-modelling task (masked-token prediction for the default BiLSTM,
next-token prediction with ``--causal``, which uses a causal Transformer). Both runs start
from the same seeds and select their model on the tagging tasks' validation accuracy; the
report gives test metrics per task, and Δm of "with LM" over "without LM" on the tagging
tasks (positive: the LM task helps). With several ``--seeds`` the Δm is averaged.

With ``--conll2003 FILE`` (CoNLL-2003 column format: word POS chunk NER), the same
comparison also runs on that corpus with tasks POS and NER (BIO tags, entity-level F1),
again with and without the LM task. One file is split 80/10/10 by seed (tag sets are then
read from the whole file); ``--conll2003-val`` and ``--conll2003-test`` give separate
files (tag sets from the training file; an unseen tag is an error).

Run: python examples/nlp_lm_pos_ner.py [--conll2003 eng.train] [--causal] [--seeds 1]
(a few minutes on 2 CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtlkit import Trainer, build_model
from mtlkit.data import TensorLoader
from mtlkit.data.conll import (
    TextBundle,
    label_vocabulary,
    read_conll2003,
    tagging_bundle,
)
from mtlkit.data.lm import LMLoader
from mtlkit.data.treebank import turkish_treebank
from mtlkit.nn import ENCODERS
from mtlkit.nn.lm import check_lm_encoder
from mtlkit.tasks import decide, delta_m, interval

BILSTM = {"embedding_dim": 64, "hidden": 64, "dropout": 0.2}
CAUSAL = {
    "kind": "transformer",
    "causal": True,
    "embedding_dim": 64,
    "hidden": 128,
    "num_heads": 4,
    "num_layers": 2,
    "dropout": 0.1,
}


def treebank(
    lm: str,
    causal: bool = False,
    max_sentences: int | None = 2000,
    max_length: int | None = 40,
    seed: int = 0,
    min_freq: int = 2,
) -> TextBundle:
    """UPOS + XPOS of the Turkish treebank, with the LM task when ``lm`` is not ``none``, on
    a BiLSTM or (``causal``) a causal Transformer, the same with and without the LM task."""
    encoder = CAUSAL if causal else BILSTM
    bundle = turkish_treebank(
        seed=seed,
        max_sentences=max_sentences,
        max_length=max_length,
        min_freq=min_freq,
        lm=lm,
        encoder=encoder,
    )
    return bundle.select_tasks([t.name for t in bundle.tasks if t.name != "deprel"])


def conll2003(
    lm: str,
    causal: bool,
    train: str,
    val: str | None = None,
    test: str | None = None,
    seed: int = 0,
) -> TextBundle:
    """POS + NER of a CoNLL-2003-format corpus (one file split by seed, or three files)."""
    if val is None or test is None:
        sentences = read_conll2003(train)
        order = np.random.default_rng(seed).permutation(len(sentences))
        a, b = int(0.8 * len(order)), int(0.9 * len(order))
        splits = {
            "train": [sentences[i] for i in order[:a]],
            "val": [sentences[i] for i in order[a:b]],
            "test": [sentences[i] for i in order[b:]],
        }
        label_sets = {
            "pos": label_vocabulary(sentences, "pos"),
            "ner": label_vocabulary(sentences, "ner", bio=True),
        }
    else:
        splits = {"train": read_conll2003(train), "val": read_conll2003(val)}
        splits["test"] = read_conll2003(test)
        label_sets = None
    encoder = CAUSAL if causal else BILSTM
    return tagging_bundle(
        "conll2003", splits, ["pos", "ner"], ["ner"], lm=lm, encoder=encoder, label_sets=label_sets
    )


def train_and_test(
    bundle: TextBundle, epochs: int = 4, seed: int = 0, batch_size: int = 32, lr: float = 3e-3
) -> dict[str, dict[str, float]]:
    """Train HPS with equal weights, select on the tagging tasks' validation accuracy; test
    metrics per task (the LM's on its own masked test batches, or clean ones if causal)."""
    torch.manual_seed(seed)
    name, options = bundle.encoder
    encoder = ENCODERS.build(name, **options)
    if bundle.lm is not None:
        check_lm_encoder(encoder, bundle.lm[1])  # type: ignore[arg-type]
    model = build_model("hps", encoder, bundle.tasks)
    trainer = Trainer(
        model,
        bundle.tasks,
        epochs=epochs,
        optimizer_params={"lr": lr},
        monitor="mean/token_accuracy",
        device="cpu",
        seed=seed,
        progress=False,
    )
    trainer.fit(bundle.loader("train", batch_size), bundle.loader("val", 256))
    results = trainer.evaluate(bundle.loader("test", 256))
    out = {
        t.name: {k: v for k, v in results[t.name].items() if k != "loss"}
        for t in bundle.tasks
        if not t.auxiliary
    }
    if bundle.lm is not None:
        task, objective, lm_options = bundle.lm
        probe = LMLoader(
            TensorLoader(bundle.test, 256),
            task,
            objective,  # type: ignore[arg-type]
            mode="fixed",
            seed=seed,
            **lm_options,
        )
        lm_metrics = trainer.evaluate(probe)[task]
        out[task] = {k: v for k, v in lm_metrics.items() if k != "loss"}
    return out


def compare(
    make: Any,
    lm: str = "masked",
    epochs: int = 4,
    seeds: Sequence[int] = (0,),
    batch_size: int = 32,
) -> dict[str, Any]:
    """Train without and with the LM task for each seed; ``make(lm, seed)`` builds the data.

    Returns per-run metrics, Δm (with LM over without) per seed, and its mean and std.
    """
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"without": [], "with": []}
    deltas = []
    for seed in seeds:
        without = train_and_test(make("none", seed), epochs, seed, batch_size)
        with_lm = train_and_test(make(lm, seed), epochs, seed, batch_size)
        runs["without"].append(without)
        runs["with"].append(with_lm)
        deltas.append(delta_m({t: with_lm[t] for t in without}, without))
    return {"runs": runs, "delta_m": deltas, "delta_m_stats": interval(deltas)}


def report(title: str, result: dict[str, Any]) -> str:
    """Mean test metrics without and with the LM task, and the verdict."""
    lines = [title, f"{'task':<8} {'metric':<16} {'without LM':>11} {'with LM':>11}"]
    without, with_lm = result["runs"]["without"], result["runs"]["with"]
    for task in with_lm[0]:
        for metric in with_lm[0][task]:
            a = [r[task][metric] for r in without] if task in without[0] else []
            b = [r[task][metric] for r in with_lm]
            left = f"{np.mean(a):11.4f}" if a else f"{'-':>11}"
            lines.append(f"{task:<8} {metric:<16} {left} {np.mean(b):11.4f}")
    stats = result["delta_m_stats"]
    mean, ci, n = stats["mean"], stats["ci"], stats["n"]
    if ci is None:
        spread = "one seed: no interval, so no verdict (run --seeds 3)"
    else:
        verdict = {
            "better": "the LM task helps here",
            "worse": "the LM task hurts here",
            "no detectable difference": "no detectable difference at this budget",
        }[decide(ci)]
        spread = f"95 % CI {ci[0]:+.2f} … {ci[1]:+.2f}, t over {n} seeds: {verdict}"
    lines.append(f"Δm (with LM over without, tagging tasks): {mean:+.2f} % ({spread})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conll2003", help="a CoNLL-2003-format file: adds POS + NER")
    parser.add_argument("--conll2003-val")
    parser.add_argument("--conll2003-test")
    parser.add_argument("--causal", action="store_true", help="next-token LM, causal encoder")
    parser.add_argument("--max-sentences", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="small models: 1 is fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = "causal" if args.causal else "masked"
    seeds = list(range(args.seeds))

    def make_treebank(option: str, seed: int) -> TextBundle:
        return treebank(option, args.causal, args.max_sentences, args.max_length, seed)

    result = compare(make_treebank, lm, args.epochs, seeds, args.batch_size)
    print(report(f"Turkish treebank, {lm} LM + UPOS + XPOS", result))
    if args.conll2003:

        def make_conll(option: str, seed: int) -> TextBundle:
            return conll2003(
                option, args.causal, args.conll2003, args.conll2003_val, args.conll2003_test, seed
            )

        result = compare(make_conll, lm, args.epochs, seeds, args.batch_size)
        print(report(f"\n{args.conll2003}, {lm} LM + POS + NER", result))


if __name__ == "__main__":
    main()
