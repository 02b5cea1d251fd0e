"""examples/nlp_tagging.py and examples/nlp_lm_pos_ner.py on tiny data."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mtlkit.tasks import delta_m

TINY = {"max_sentences": 60, "max_length": 12}


def load_example(name: str) -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_conll2003(path: Path, sentences: int = 60, seed: int = 0) -> Path:
    """A small CoNLL-2003-format corpus: '<PER> visited <LOC> .' and the like, IOB1 tags."""
    rng = random.Random(seed)
    people = [["John", "Smith"], ["Ada"], ["Mary", "Ann", "Lee"], ["Bob"]]
    places = [["Paris"], ["New", "York"], ["Ankara"], ["Rio", "de", "Janeiro"]]
    verbs = ["visited", "left", "likes"]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(sentences):
        person, place = rng.choice(people), rng.choice(places)
        lines += [f"{w} NNP B-NP I-PER" for w in person]
        lines.append(f"{rng.choice(verbs)} VBD B-VP O")
        lines += [f"{w} NNP B-NP I-LOC" for w in place]
        lines += [". . O O", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_nlp_tagging_compares_stl_and_mtl() -> None:
    example = load_example("nlp_tagging")
    bundle = example.load(**TINY)
    result = example.compare(bundle, epochs=1, batch_size=8)
    assert set(result["stl"]) == set(result["mtl"]) == {"upos", "xpos", "deprel"}
    for metrics in (*result["stl"].values(), *result["mtl"].values()):
        assert set(metrics) == {"token_accuracy", "token_macro_f1"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert result["delta_m"] == pytest.approx(delta_m(result["mtl"], result["stl"]))
    table = example.report(result)
    assert "deprel" in table and f"{result['delta_m']:+.2f}%" in table


def test_lm_example_on_the_treebank_and_a_conll2003_file(tmp_path: Path) -> None:
    example = load_example("nlp_lm_pos_ner")

    def make(lm: str, seed: int):
        return example.treebank(lm, False, 100, 12, seed, min_freq=1)

    result = example.compare(make, "masked", epochs=2, seeds=[0], batch_size=8)
    without, with_lm = result["runs"]["without"][0], result["runs"]["with"][0]
    assert set(without) == {"upos", "xpos"} and set(with_lm) == {"upos", "xpos", "lm"}
    vocab = make("masked", 0).info["vocab_size"]
    assert 1.0 < with_lm["lm"]["perplexity"] < vocab  # better than a uniform guess
    assert result["delta_m"][0] == pytest.approx(delta_m({t: with_lm[t] for t in without}, without))
    path = write_conll2003(tmp_path / "ner.txt")
    bundle = example.conll2003("masked", False, str(path), seed=0)
    assert [t.name for t in bundle.tasks] == ["pos", "ner", "lm"]
    assert bundle.vocabularies["ner"].items == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    ner = example.compare(
        lambda lm, s: example.conll2003(lm, False, str(path), seed=s), epochs=2, batch_size=8
    )
    scores = ner["runs"]["with"][0]["ner"]
    assert set(scores) == {"entity_f1", "token_accuracy"} and not math.isnan(scores["entity_f1"])
    assert "one seed: no interval, so no verdict" in example.report("NER", ner)


def test_lm_example_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    example = load_example("nlp_lm_pos_ner")
    train = write_conll2003(tmp_path / "train.txt", 40, 0)
    val = write_conll2003(tmp_path / "val.txt", 10, 1)
    test = write_conll2003(tmp_path / "test.txt", 10, 2)
    argv = [
        "nlp_lm_pos_ner.py",
        "--max-sentences",
        "40",
        "--max-length",
        "10",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ]
    argv += ["--conll2003", str(train), "--conll2003-val", str(val), "--conll2003-test", str(test)]
    argv += ["--causal"]
    monkeypatch.setattr(sys, "argv", argv)
    example.main()
    out = capsys.readouterr().out
    assert "Turkish treebank, causal LM + UPOS + XPOS" in out
    assert "causal LM + POS + NER" in out and "entity_f1" in out and "perplexity" in out
    assert out.count("Δm (with LM over without") == 2
