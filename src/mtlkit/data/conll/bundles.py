"""Token-tagging bundles: padded tensors, tagging tasks, the ``conllu`` and ``conll2003``
datasets.

Tensors (:func:`encode_sentences`): inputs are ``(N, L)`` int64 word ids, ``L`` the longest
sentence of the split, with id 0 = padding (``<pad>``), 1 = unknown word (``<unk>``) and
2 = ``<mask>`` (for masked language modelling); targets are ``(N, L)`` int64 class indices
with ``-100`` at padding and at missing labels. Label vocabularies come from the training
split; a validation or test tag outside them raises a TaskDataError naming the file, the
line and the tag (an unseen *word* simply becomes ``<unk>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorLoader, TensorSplit
from mtlkit.data.conll.readers import (
    CONLL2003_COLUMNS,
    BioRule,
    Sentence,
    read_conll2003,
    read_conllu,
)
from mtlkit.data.conll.vocab import PAD, PAD_ID, Vocabulary, label_vocabulary, word_vocabulary
from mtlkit.data.lm import LMLoader
from mtlkit.errors import ConfigError, DatasetError, TaskDataError
from mtlkit.tasks import IGNORE_INDEX, Task, bind_labels, lm_task

__all__ = [
    "TextBundle",
    "conll2003_dataset",
    "conllu_dataset",
    "encode_sentences",
    "tagging_bundle",
]


# --------------------------------------------------------------------------- tensors


def encode_sentences(
    sentences: Sequence[Sentence],
    words: Vocabulary,
    labels: Mapping[str, Vocabulary],
    name: str = "split",
) -> TensorSplit:
    """Pad ``sentences`` into a :class:`TensorSplit`: word ids ``(N, L)`` (0 = padding) and,
    for each column of ``labels``, class indices ``(N, L)`` (-100 = padding or missing).

    A tag outside its label vocabulary raises a TaskDataError naming file, line and tag.
    """
    if not sentences:
        raise DatasetError(f"{name} split: no sentences to encode")
    if words.get(PAD) != PAD_ID or words.unknown is None:
        raise ConfigError("word vocabulary: id 0 must be '<pad>' and it needs an unknown item")
    length = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), length), PAD_ID, dtype=torch.long)
    targets = {c: torch.full_like(ids, IGNORE_INDEX) for c in labels}
    for row, sentence in enumerate(sentences):
        ids[row, : len(sentence)] = torch.tensor([words.get(w) for w in sentence.words])
        for column, vocab in labels.items():
            values = []
            for tag, line in zip(sentence.column(column), sentence.lines, strict=True):
                idx = vocab.get(tag) if tag is not None else IGNORE_INDEX
                if idx is None:
                    raise TaskDataError(
                        f"{sentence.source}, line {line}: {column} tag {tag!r} does not occur "
                        f"in the training label set ({len(vocab)} tags)"
                    )
                values.append(idx)
            targets[column][row, : len(sentence)] = torch.tensor(values)
    return TensorSplit(ids, targets, name)


# --------------------------------------------------------------------------- bundles


@dataclass
class TextBundle(DataBundle):
    """A token-tagging :class:`DataBundle`, with an optional language-modelling task.

    ``lm`` is ``(task name, objective, options)`` for :class:`mtlkit.data.lm.LMLoader`: the
    loaders then add that task's targets to every batch (training batches are masked
    dynamically; validation and test batches are left clean, see :mod:`mtlkit.data.lm`). The
    splits themselves hold no language-modelling target. ``vocabularies`` maps ``words`` and
    each tag column to its vocabulary.
    """

    lm: tuple[str, str, dict[str, Any]] | None = None
    vocabularies: dict[str, Vocabulary] | None = None

    def loader(self, name: str, batch_size: int, shuffle: bool | None = None) -> Any:
        base = TensorLoader(
            self.split(name), batch_size, shuffle=(name == "train") if shuffle is None else shuffle
        )
        if self.lm is None:
            return base
        task, objective, options = self.lm
        mode = "dynamic" if name == "train" else "clean"
        return LMLoader(base, task, objective, mode=mode, **options)

    def select_tasks(self, names: list[str]) -> TextBundle:
        bundle = super().select_tasks(names)
        keep_lm = self.lm is not None and self.lm[0] in names
        return dataclasses.replace(bundle, lm=self.lm if keep_lm else None)


def tagging_bundle(
    name: str,
    splits: Mapping[str, Sequence[Sentence]],
    columns: Sequence[str],
    bio_columns: Sequence[str] = (),
    min_freq: int = 1,
    lm: Literal["none", "masked", "causal"] = "none",
    encoder: Mapping[str, Any] | None = None,
    label_sets: Mapping[str, Vocabulary] | None = None,
) -> TextBundle:
    """Vocabularies from ``splits['train']``, padded splits, and one tagging task per column.

    Tasks are ``tagging`` (metrics token accuracy and macro-F1) or, for ``bio_columns``,
    ``bio_tagging`` (entity F1 bound to the tag names, then token accuracy). ``label_sets``
    fixes a column's label vocabulary instead of reading it from the training split. ``lm``
    adds the auxiliary task ``lm`` (``masked_lm`` or ``causal_lm``) predicting words; the
    encoder is a BiLSTM, or a causal Transformer for ``lm="causal"`` (``encoder`` overrides
    its options).
    """
    where = f"dataset '{name}'"
    if lm not in ("none", "masked", "causal"):
        raise ConfigError(f"{where}: option 'lm' must be 'none', 'masked' or 'causal', got {lm!r}")
    if "lm" in columns:
        raise ConfigError(f"{where}: a tag column may not be called 'lm'")
    words = word_vocabulary(splits["train"], min_freq)
    vocabs = {
        c: (label_sets or {}).get(c) or label_vocabulary(splits["train"], c, c in bio_columns)
        for c in columns
    }
    for c, vocab in vocabs.items():
        if len(vocab) < 2:
            raise DatasetError(f"{where}: column '{c}' has {len(vocab)} tag(s); need ≥ 2")
    encoded = {k: encode_sentences(v, words, vocabs, k) for k, v in splits.items()}
    tasks = []
    for c in columns:
        if c in bio_columns:
            task = Task(c, "bio_tagging", len(vocabs[c]))
            bind_labels(task, vocabs[c].items)
        else:
            task = Task(c, "tagging", len(vocabs[c]), metrics=["token_accuracy", "token_macro_f1"])
        tasks.append(task)
    enc: dict[str, Any] = {"vocab_size": len(words)}
    lm_spec = None
    if lm != "none":
        objective = "causal" if lm == "causal" else "masked"
        tasks.append(lm_task("lm", objective, len(words)))
        lm_spec = ("lm", objective, {"vocab_size": len(words)})
        if objective == "causal":
            enc.update(kind="transformer", causal=True)
    enc.update(encoder or {})
    return TextBundle(
        name,
        encoded["train"],
        encoded["val"],
        encoded["test"],
        tasks,
        ("token", enc),
        info={
            "sentences": {k: len(v) for k, v in splits.items()},
            "tokens": {k: sum(len(s) for s in v) for k, v in splits.items()},
            "labels": {c: v.items for c, v in vocabs.items()},
            "vocab_size": len(words),
        },
        lm=lm_spec,
        vocabularies={"words": words, **vocabs},
    )


@DATASETS.register("conllu")
def conllu_dataset(
    train: str,
    val: str,
    test: str,
    columns: Sequence[str] = ("upos", "xpos", "deprel"),
    min_freq: int = 1,
    lm: Literal["none", "masked", "causal"] = "none",
) -> TextBundle:
    """Any CoNLL-U corpus given as three files; one tagging task per column."""
    splits = {
        "train": read_conllu(train, columns),
        "val": read_conllu(val, columns),
        "test": read_conllu(test, columns),
    }
    return tagging_bundle("conllu", splits, list(columns), min_freq=min_freq, lm=lm)


@DATASETS.register("conll2003")
def conll2003_dataset(
    train: str,
    val: str,
    test: str,
    columns: Sequence[str] = CONLL2003_COLUMNS,
    tasks: Sequence[str] = ("pos", "ner"),
    bio_columns: Sequence[str] = ("ner",),
    bio_rule: BioRule = "repair",
    min_freq: int = 1,
    lm: Literal["none", "masked", "causal"] = "none",
) -> TextBundle:
    """A CoNLL-2003 column-format corpus given as three files; ``tasks`` picks the columns
    learned (NER as BIO tagging with entity F1, POS as tagging by default)."""
    unknown = sorted(set(tasks) - set(columns))
    if unknown:
        raise ConfigError(
            f"dataset 'conll2003': option 'tasks' names {', '.join(unknown)}, not among the "
            f"columns {', '.join(columns)}"
        )
    read = {
        k: read_conll2003(p, columns, bio_columns, bio_rule)
        for k, p in (("train", train), ("val", val), ("test", test))
    }
    bio = [c for c in bio_columns if c in tasks]
    return tagging_bundle("conll2003", read, list(tasks), bio, min_freq, lm)
