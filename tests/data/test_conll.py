"""CoNLL-U and CoNLL-2003 readers, vocabularies, padding, BIO repair, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlkit.data import DATASETS, load_dataset
from mtlkit.data.conll import (
    MASK_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    check_bio,
    encode_sentences,
    label_vocabulary,
    read_conll2003,
    read_conllu,
    word_vocabulary,
)
from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks.tagging import bio_spans

CONLLU = """\
# sent_id = s1
# text = Ali eve gitti .
1\tAli\tali\tPROPN\tNNP\t_\t3\tnsubj\t_\t_
2\teve\tev\tNOUN\tNN\t_\t3\tobl\t_\t_
3\tgitti\tgit\tVERB\tVB\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = s2
1-2\tgeldim\t_\t_\t_\t_\t_\t_\t_\t_
1\tgel\tgel\tVERB\tVB\t_\t0\troot\t_\t_
2\tdim\t_\tVERB\t_\t_\t1\tig\t_\t_
"""

CONLL2003 = """\
-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CoNLL-U


def test_conllu_reads_words_tags_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conllu", CONLLU)
    first, second = read_conllu(path)
    assert first.words == ("Ali", "eve", "gitti", ".")
    assert first.tags["upos"] == ("PROPN", "NOUN", "VERB", "PUNCT")
    assert first.tags["deprel"] == ("nsubj", "obl", "root", "punct")
    assert first.lines == (3, 4, 5, 6)
    assert first.sent_id == "s1"
    # the multi-word token line 9 is skipped; a "_" tag is missing
    assert second.words == ("gel", "dim")
    assert second.lines == (10, 11)
    assert second.tags["xpos"] == ("VB", None)


def test_conllu_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    bad = CONLLU.replace("2\teve\tev\tNOUN\tNN\t_\t3\tobl\t_\t_", "2 eve ev NOUN NN _ 3 obl _ _")
    path = write(tmp_path, "bad.conllu", bad)
    with pytest.raises(TaskDataError, match=r"bad\.conllu, line 4: malformed CoNLL-U line"):
        read_conllu(path)
    nine = CONLLU.replace("\t_\t_\n2\teve", "\t_\n2\teve", 1)
    with pytest.raises(TaskDataError, match=r"line 3: .*expected 10 tab-separated fields, got 9"):
        read_conllu(write(tmp_path, "nine.conllu", nine))
    bad_id = CONLLU.replace("3\tgitti", "x\tgitti")
    with pytest.raises(TaskDataError, match=r"line 5: .*ID 'x'"):
        read_conllu(write(tmp_path, "id.conllu", bad_id))


def test_conllu_unknown_column_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        read_conllu(write(tmp_path, "a.conllu", CONLLU), columns=["pos"])


# --------------------------------------------------------------------------- CoNLL-2003


def test_conll2003_reads_columns_and_repairs_iob1(tmp_path: Path) -> None:
    sentences = read_conll2003(write(tmp_path, "ner.txt", CONLL2003))
    assert [s.words for s in sentences] == [
        ("EU", "rejects", "German", "call", "."),
        ("Peter", "Blackburn"),
    ]
    assert sentences[0].tags["pos"] == ("NNP", "VBZ", "JJ", "NN", ".")
    assert sentences[0].lines == (3, 4, 5, 6, 7)
    # the IOB1 "I-PER I-PER" opening a sentence becomes IOB2 "B-PER I-PER"
    assert sentences[1].tags["ner"] == ("B-PER", "I-PER")


def test_bio_repair_keeps_the_conlleval_entities() -> None:
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "I-ORG"]
    repaired = check_bio(tags, "repair", "f", range(1, 9))
    assert repaired == ("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
    assert bio_spans(repaired) == bio_spans(tags)
    # every I- now continues an entity of its own type
    for prev, tag in zip(("O", *repaired), repaired, strict=False):
        if tag.startswith("I-"):
            assert prev[2:] == tag[2:]


def test_bio_reject_names_file_line_and_tag(tmp_path: Path) -> None:
    path = write(tmp_path, "ner.txt", CONLL2003)
    with pytest.raises(TaskDataError, match=r"ner\.txt, line 9: tag 'I-PER' follows the start"):
        read_conll2003(path, bio_rule="reject")
    text = "a NN O O\nb NN O I-LOC\n"
    with pytest.raises(TaskDataError, match=r"line 2: tag 'I-LOC' follows 'O'"):
        read_conll2003(write(tmp_path, "o.txt", text), bio_rule="reject")
    with pytest.raises(TaskDataError, match=r"line 1: tag 'E-LOC' is not a BIO tag"):
        read_conll2003(write(tmp_path, "e.txt", "a NN O E-LOC\n"))
    with pytest.raises(ConfigError, match="bio_rule"):
        read_conll2003(path, bio_rule="fix")


def test_conll2003_wrong_column_count_names_file_and_record(tmp_path: Path) -> None:
    bad = CONLL2003.replace("call NN I-NP O", "call NN O")
    with pytest.raises(
        TaskDataError, match=r"ner\.txt, line 6: CoNLL-2003 record 'call NN O' has 3 fields"
    ):
        read_conll2003(write(tmp_path, "ner.txt", bad))


# --------------------------------------------------------------------------- tensors


def test_vocabularies() -> None:
    sentences = read_conll2003_text(CONLL2003)
    words = word_vocabulary(sentences)
    assert words.items[:3] == ["<pad>", "<unk>", "<mask>"]
    assert (words.get("<pad>"), words.get("<unk>"), words.get("<mask>")) == (
        PAD_ID,
        UNK_ID,
        MASK_ID,
    )
    assert words.get("never-seen") == UNK_ID
    assert len(word_vocabulary(sentences, min_freq=2)) == 3  # every word occurs once
    ner = label_vocabulary(sentences, "ner", bio=True)
    # the CoNLL-2003 layout of the registered entity_f1: O, then B-/I- per sorted type
    assert ner.items == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert ner.get("B-LOC") is None
    assert Vocabulary.from_dict(ner.to_dict()).items == ner.items
    with pytest.raises(ConfigError, match="min_freq"):
        word_vocabulary(sentences, min_freq=0)


def read_conll2003_text(text: str):
    from mtlkit.data.conll import parse_conll2003

    return parse_conll2003(text, "mem.txt")


def test_encode_pads_with_zero_and_minus_100() -> None:
    sentences = read_conll2003_text(CONLL2003)
    words = word_vocabulary(sentences)
    labels = {"ner": label_vocabulary(sentences, "ner", bio=True)}
    split = encode_sentences(sentences, words, labels, "train")
    assert split.inputs.shape == (2, 5) and split.inputs.dtype == torch.int64
    assert split.inputs[1, 2:].tolist() == [PAD_ID] * 3
    assert bool((split.inputs[0] > MASK_ID).all())
    assert split.targets["ner"][1].tolist() == [5, 6, -100, -100, -100]
    assert [words.items[i] for i in split.inputs[0].tolist()] == list(sentences[0].words)


def test_unseen_tag_names_file_line_and_tag(tmp_path: Path) -> None:
    train = read_conll2003_text(CONLL2003)
    test = read_conll2003(write(tmp_path, "test.txt", "Paris NNP B-NP B-LOC\n"))
    vocab = {"ner": label_vocabulary(train, "ner", bio=True)}
    with pytest.raises(
        TaskDataError, match=r"test\.txt, line 1: ner tag 'B-LOC' does not occur in the training"
    ):
        encode_sentences(test, word_vocabulary(train), vocab, "test")


# --------------------------------------------------------------------------- datasets


def test_registered_conll_datasets(tmp_path: Path) -> None:
    assert "conllu" in DATASETS and "conll2003" in DATASETS
    path = str(write(tmp_path, "ner.txt", CONLL2003))
    bundle = load_dataset("conll2003", train=path, val=path, test=path, lm="masked")
    assert [t.name for t in bundle.tasks] == ["pos", "ner", "lm"]
    assert [t.kind for t in bundle.tasks] == ["tagging", "bio_tagging", "masked_lm"]
    assert bundle.tasks[2].auxiliary and bundle.tasks[2].num_outputs == bundle.info["vocab_size"]
    assert bundle.encoder == ("token", {"vocab_size": bundle.info["vocab_size"]})
    inputs, targets = next(iter(bundle.loader("val", 8)))
    assert set(targets) == {"pos", "ner", "lm"}
    assert bool((targets["lm"] == -100).all())  # evaluation batches stay clean
    assert torch.equal(inputs, bundle.val.inputs[:8])
    only_ner = bundle.select_tasks(["ner"])
    assert only_ner.lm is None and set(next(iter(only_ner.loader("train", 8)))[1]) == {"ner"}
    conllu_path = str(write(tmp_path, "a.conllu", CONLLU))
    ud = load_dataset("conllu", train=conllu_path, val=conllu_path, test=conllu_path)
    assert [t.name for t in ud.tasks] == ["upos", "xpos", "deprel"]
    assert ud.train.targets["xpos"][1].tolist() == [
        ud.vocabularies["xpos"].get("VB"),
        -100,
        -100,
        -100,
    ]
    with pytest.raises(ConfigError, match="option 'tasks'"):
        load_dataset("conll2003", train=path, val=path, test=path, tasks=["lemma"])


def test_missing_conllu_package_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    from mtlkit.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "conllu", None)
    with pytest.raises(MissingExtraError, match=r"mtlkit\[datasets\]"):
        read_conllu(write(tmp_path, "a.conllu", CONLLU))
