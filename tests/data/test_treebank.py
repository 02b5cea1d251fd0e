"""The Turkish treebank dataset: real counts, tasks, seeded splits, caps, LM option, configs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from mtlkit.config import parse_config
from mtlkit.data import load_dataset
from mtlkit.data.treebank import read_section, treebank_file
from mtlkit.errors import DatasetError
from mtlkit.experiments.run import train_run

SMALL = {"max_sentences": 200, "max_length": 25}


def test_files_and_real_counts() -> None:
    assert treebank_file("web").name == "web.conllu"
    web, wiki = read_section("web"), read_section("wiki")
    assert (len(web), sum(map(len, web))) == (2541, 32422)
    assert (len(wiki), sum(map(len, wiki))) == (2310, 48948)
    assert len(web) + len(wiki) == 4851  # 81,370 words
    with pytest.raises(DatasetError, match="unknown section 'news'"):
        treebank_file("news")


def test_tasks_and_full_tag_inventories() -> None:
    bundle = load_dataset("turkish_treebank", **SMALL)
    assert [(t.name, t.kind, t.num_outputs) for t in bundle.tasks] == [
        ("upos", "tagging", 14),
        ("xpos", "tagging", 45),
        ("deprel", "tagging", 44),
    ]
    assert all(t.metrics == ["token_accuracy", "token_macro_f1"] for t in bundle.tasks)
    assert bundle.encoder == ("token", {"vocab_size": bundle.info["vocab_size"]})
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.inputs.dtype == torch.int64
        real = split.inputs != 0
        for task in bundle.tasks:
            target = split.targets[task.name]
            assert bool((target[~real] == -100).all())
            assert int(target[real].max()) < task.num_outputs and int(target[real].min()) >= 0


def test_splits_are_seeded_disjoint_and_capped() -> None:
    a = load_dataset("turkish_treebank", seed=1, **SMALL)
    b = load_dataset("turkish_treebank", seed=1, **SMALL)
    c = load_dataset("turkish_treebank", seed=2, **SMALL)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.inputs[:20], c.train.inputs[:20])
    assert a.info["sentences"] == {"train": 160, "val": 20, "test": 20}
    assert max(s.shape[1] for s in (a.train.inputs, a.val.inputs, a.test.inputs)) <= 25
    # no sentence is in two splits (rows compared as word-id sequences)
    rows = [tuple(r.tolist()) for s in (a.train, a.val, a.test) for r in s.inputs]
    assert len(set(rows)) >= len(rows) - 2  # a few short sentences ("." ) may repeat verbatim
    # max_length drops the long sentences instead of cutting them
    short = sum(1 for s in (*read_section("web"), *read_section("wiki")) if len(s) <= 10)
    full = load_dataset("turkish_treebank", max_length=10, fractions=(0.5, 0.25, 0.25))
    expected = {"train": int(0.5 * short), "val": int(0.25 * short), "test": int(0.25 * short)}
    assert full.info["sentences"] == expected
    assert full.train.inputs.shape[1] <= 10
    words = Counter(w for s in read_section("web") for w in s.words)
    web = load_dataset("turkish_treebank", sections=["web"], min_freq=2, max_sentences=300)
    vocab = web.vocabularies["words"]
    assert len(vocab) < 3 + sum(1 for c in words.values() if c >= 2)  # only train words kept
    with pytest.raises(DatasetError, match="option 'max_length' must be ≥ 1"):
        load_dataset("turkish_treebank", max_length=0)
    with pytest.raises(DatasetError, match="option 'fractions'"):
        load_dataset("turkish_treebank", fractions=(0.9, 0.2, 0.1))


def test_masked_lm_option_masks_training_batches_only() -> None:
    bundle = load_dataset("turkish_treebank", lm="masked", **SMALL)
    assert bundle.tasks[-1].name == "lm" and bundle.tasks[-1].kind == "masked_lm"
    torch.manual_seed(0)
    inputs, targets = next(iter(bundle.loader("train", 64, shuffle=False)))
    clean = bundle.train.inputs[:64]
    selected = targets["lm"] != -100
    assert bool(selected.any()) and torch.equal(targets["lm"][selected], clean[selected])
    assert torch.equal(inputs[~selected], clean[~selected])
    assert bool((inputs[selected] == 2).any())
    val_inputs, val_targets = next(iter(bundle.loader("val", 64)))
    assert torch.equal(val_inputs, bundle.val.inputs[:64])
    assert bool((val_targets["lm"] == -100).all())
    causal = load_dataset("turkish_treebank", lm="causal", **SMALL)
    assert causal.tasks[-1].kind == "causal_lm"
    assert causal.encoder[1]["causal"] is True and causal.encoder[1]["kind"] == "transformer"


def test_a_config_trains_tagging_with_masked_lm(tmp_path: Path) -> None:
    config = parse_config(
        {
            "name": "treebank",
            "seed": 0,
            "data": {
                "name": "turkish_treebank",
                "params": {
                    **SMALL,
                    "max_sentences": 100,
                    "lm": "masked",
                    "encoder": {"embedding_dim": 16, "hidden": 16},
                },
                "batch_size": 32,
            },
            "model": {"architecture": "hps"},
            "train": {"epochs": 1, "monitor": "mean/token_accuracy"},
        }
    )
    results = train_run(config, tmp_path / "run", progress=False)
    test = results["test"]
    assert set(test) == {"upos", "xpos", "deprel", "lm"}
    assert 0.0 <= test["upos"]["token_accuracy"] <= 1.0
