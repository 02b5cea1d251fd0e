"""Token-tagging corpora: CoNLL-U and CoNLL-2003 readers, vocabularies, padded tensors.

Two formats, one result (a list of :class:`Sentence`, each token with its file and line):

- **CoNLL-U** (Universal Dependencies, Nivre et al., 2016, "Universal Dependencies v1: A
  Multilingual Treebank Collection", LREC): ten tab-separated columns per word, ``#``
  comments, sentences separated by blank lines. Lines are parsed by the ``conllu`` package
  (optional extra ``mtlkit[datasets]``) after a check of our own, because ``conllu`` accepts
  lines that are not CoNLL-U (two-space separated, fewer columns). Multi-word token lines
  (``1-2``) and empty nodes (``1.1``) are skipped: tags belong to syntactic words.
  A ``_`` tag is a missing label (``-100`` in the targets).
- **CoNLL-2003** (Tjong Kim Sang & De Meulder, 2003, "Introduction to the CoNLL-2003 Shared
  Task: Language-Independent Named Entity Recognition", CoNLL): one word per line followed by
  its tag columns (``word POS chunk NER`` in the original), separated by whitespace; blank
  lines end sentences; ``-DOCSTART-`` lines are skipped. Every record must have exactly
  ``1 + len(columns)`` fields.

BIO columns are checked and made consistent by one documented rule (``bio_rule``):

- ``"repair"`` (default): an ``I-X`` that does not continue an ``X`` entity (at the start of
  a sentence, after ``O``, or after a tag of another type) becomes ``B-X``. This is exactly
  how ``conlleval`` reads such a tag (it opens a new entity), so entity F1 is unchanged; it
  also converts the IOB1 scheme of the original CoNLL-2003 release to IOB2.
- ``"reject"``: such a tag raises :class:`~mtlkit.errors.TaskDataError` naming file, line
  and tag.

A tag that is neither ``O`` nor ``B-``/``I-`` something is always an error.

Tensors (:func:`encode_sentences`): inputs are ``(N, L)`` int64 word ids, ``L`` the longest
sentence of the split, with id 0 = padding (``<pad>``), 1 = unknown word (``<unk>``) and
2 = ``<mask>`` (for masked language modelling); targets are ``(N, L)`` int64 class indices
with ``-100`` at padding and at missing labels. Label vocabularies come from the training
split; a validation or test tag outside them raises a TaskDataError naming the file, the
line and the tag (an unseen *word* simply becomes ``<unk>``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorLoader, TensorSplit
from mtlkit.data.lm import LMLoader
from mtlkit.errors import ConfigError, DatasetError, MissingExtraError, TaskDataError
from mtlkit.tasks import IGNORE_INDEX, Task, bind_labels, lm_task

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
WORD_SPECIALS = (PAD, UNK, MASK)
CONLLU_FIELDS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
CONLL2003_COLUMNS = ("pos", "chunk", "ner")
BioRule = Literal["repair", "reject"]

_CONLLU_ID = re.compile(r"^(\d+|\d+-\d+|\d+\.\d+)$")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, a tag sequence per column, and where each word was read.

    ``tags[column][i]`` is the tag of word ``i`` (None when missing); ``lines[i]`` its
    1-based line number in ``source``.
    """

    words: tuple[str, ...]
    tags: Mapping[str, tuple[str | None, ...]]
    source: str
    lines: tuple[int, ...]
    sent_id: str | None = None

    def __len__(self) -> int:
        return len(self.words)


class Vocabulary:
    """A bijection between strings and ids ``0..n-1``.

    ``unknown``: the item that unseen strings map to (must be in ``items``); without it an
    unseen string has no id and :meth:`get` returns None.
    """

    def __init__(self, items: Iterable[str], unknown: str | None = None) -> None:
        self.items: list[str] = list(items)
        self.ids: dict[str, int] = {s: i for i, s in enumerate(self.items)}
        if len(self.ids) != len(self.items):
            raise ConfigError(f"vocabulary: items repeat: {self.items[:20]}")
        if unknown is not None and unknown not in self.ids:
            raise ConfigError(f"vocabulary: the unknown item {unknown!r} is not among the items")
        self.unknown = unknown

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self.ids

    def __repr__(self) -> str:
        head = ", ".join(self.items[:5])
        return f"Vocabulary({len(self)} items: {head}{', ...' if len(self) > 5 else ''})"

    def get(self, item: str) -> int | None:
        """The id of ``item``, the unknown item's id, or None."""
        idx = self.ids.get(item)
        if idx is None and self.unknown is not None:
            return self.ids[self.unknown]
        return idx

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (:meth:`from_dict` inverts it)."""
        return {"items": list(self.items), "unknown": self.unknown}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Vocabulary:
        return cls(state["items"], state.get("unknown"))


def word_vocabulary(sentences: Iterable[Sentence], min_freq: int = 1) -> Vocabulary:
    """``<pad>``, ``<unk>``, ``<mask>``, then the words seen ≥ ``min_freq`` times (most
    frequent first, ties alphabetical)."""
    if min_freq < 1:
        raise ConfigError(f"word vocabulary: option 'min_freq' must be ≥ 1, got {min_freq}")
    counts = Counter(w for s in sentences for w in s.words)
    kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return Vocabulary([*WORD_SPECIALS, *(w for w in kept if w not in WORD_SPECIALS)], UNK)


def label_vocabulary(sentences: Iterable[Sentence], column: str, bio: bool = False) -> Vocabulary:
    """The tags of ``column`` (missing tags left out), sorted.

    With ``bio=True`` the layout is that of CoNLL-2003 (and of the registered ``entity_f1``
    metric): ``O`` first, then ``B-T``, ``I-T`` for each entity type ``T`` in sorted order,
    both present even when only one occurs.
    """
    tags = {t for s in sentences for t in _column(s, column) if t is not None}
    if not bio:
        return Vocabulary(sorted(tags))
    types = sorted({t[2:] for t in tags if t != "O"})
    return Vocabulary(["O", *(f"{p}-{x}" for x in types for p in ("B", "I"))])


def _column(sentence: Sentence, column: str) -> tuple[str | None, ...]:
    if column not in sentence.tags:
        raise ConfigError(
            f"{sentence.source}: no tag column '{column}'; columns: {', '.join(sentence.tags)}"
        )
    return sentence.tags[column]


# --------------------------------------------------------------------------- BIO


def check_bio(
    tags: Sequence[str | None], rule: BioRule, source: str, lines: Sequence[int]
) -> tuple[str | None, ...]:
    """Check a sentence's BIO tags and apply ``rule`` to an ``I-X`` that opens an entity.

    ``"repair"`` rewrites it as ``B-X``; ``"reject"`` raises naming file, line and tag.
    """
    out: list[str | None] = []
    previous = "O"
    for tag, line in zip(tags, lines, strict=True):
        if tag is None:
            out.append(None)
            previous = "O"
            continue
        if not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            raise TaskDataError(
                f"{source}, line {line}: tag {tag!r} is not a BIO tag ('O', 'B-TYPE', 'I-TYPE')"
            )
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            if rule == "reject":
                after = "the start of the sentence" if not out else f"{previous!r}"
                raise TaskDataError(
                    f"{source}, line {line}: tag {tag!r} follows {after}; an I- tag must "
                    f"continue an entity of its type (bio_rule 'repair' rewrites it as "
                    f"'B-{tag[2:]}')"
                )
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return tuple(out)


def _check_rule(rule: str, where: str) -> None:
    if rule not in ("repair", "reject"):
        raise ConfigError(f"{where}: option 'bio_rule' must be 'repair' or 'reject', got {rule!r}")


# --------------------------------------------------------------------------- CoNLL-U


def _conllu_parser() -> Any:
    try:
        from conllu import parser
    except ImportError:
        raise MissingExtraError("conllu", "datasets", "reading CoNLL-U files") from None
    return parser


def _blocks(text: str) -> Iterable[tuple[int, list[str]]]:
    """Sentence blocks as (line number of the first line, lines)."""
    block: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def parse_conllu(
    text: str,
    source: str = "<string>",
    columns: Sequence[str] = ("upos", "xpos", "deprel"),
    bio_columns: Sequence[str] = (),
    bio_rule: BioRule = "repair",
) -> list[Sentence]:
    """Sentences of CoNLL-U ``text`` with the tag ``columns`` (CoNLL-U field names).

    A line that is not a comment and has not exactly ten tab-separated fields, or whose ID is
    not an integer, range or decimal, raises a TaskDataError naming ``source`` and the line.
    """
    unknown = sorted(set(columns) - set(CONLLU_FIELDS[2:]))
    if unknown:
        raise ConfigError(
            f"CoNLL-U reader: option 'columns' has unknown field(s) {', '.join(unknown)}; "
            f"fields: {', '.join(CONLLU_FIELDS[2:])}"
        )
    _check_rule(bio_rule, "CoNLL-U reader")
    parser = _conllu_parser()
    sentences = []
    for start, block in _blocks(text):
        numbers = []
        for offset, line in enumerate(block):
            number = start + offset
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise TaskDataError(
                    f"{source}, line {number}: malformed CoNLL-U line: expected 10 "
                    f"tab-separated fields, got {len(fields)}: {line[:80]!r}"
                )
            if not _CONLLU_ID.match(fields[0]):
                raise TaskDataError(
                    f"{source}, line {number}: malformed CoNLL-U line: ID {fields[0]!r} is not "
                    "an integer, a range 'a-b' or a decimal 'a.b'"
                )
            numbers.append(number)
        try:
            tokens = parser.parse_token_and_metadata("\n".join(block))
        except parser.ParseException as err:
            raise TaskDataError(
                f"{source}, sentence at line {start}: malformed CoNLL-U: {err}"
            ) from None
        words, lines, tags = [], [], {c: [] for c in columns}
        for token, number in zip(tokens, numbers, strict=True):
            if not isinstance(token["id"], int):
                continue  # multi-word token or empty node
            words.append(str(token["form"]))
            lines.append(number)
            for c in columns:
                value = token[c]
                tags[c].append(None if value in (None, "_") else str(value))
        if not words:
            continue
        final = {c: tuple(v) for c, v in tags.items()}
        for c in bio_columns:
            final[c] = check_bio(final[c], bio_rule, source, lines)
        sentences.append(
            Sentence(tuple(words), final, source, tuple(lines), tokens.metadata.get("sent_id"))
        )
    return sentences


def read_conllu(
    path: str | Path,
    columns: Sequence[str] = ("upos", "xpos", "deprel"),
    bio_columns: Sequence[str] = (),
    bio_rule: BioRule = "repair",
) -> list[Sentence]:
    """Sentences of the CoNLL-U file ``path`` (see :func:`parse_conllu`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CoNLL-U file {path} does not exist")
    return parse_conllu(path.read_text(encoding="utf-8"), str(path), columns, bio_columns, bio_rule)


# --------------------------------------------------------------------------- CoNLL-2003


def parse_conll2003(
    text: str,
    source: str = "<string>",
    columns: Sequence[str] = CONLL2003_COLUMNS,
    bio_columns: Sequence[str] = ("ner",),
    bio_rule: BioRule = "repair",
) -> list[Sentence]:
    """Sentences of CoNLL-2003 column-format ``text``: ``word`` then one field per column.

    A record with another number of whitespace-separated fields than ``1 + len(columns)``
    raises a TaskDataError naming ``source``, the line and the record.
    """
    columns = list(columns)
    if not columns or len(set(columns)) != len(columns):
        raise ConfigError(
            f"CoNLL-2003 reader: option 'columns' must be distinct names, got {columns}"
        )
    missing = sorted(set(bio_columns) - set(columns))
    if missing:
        raise ConfigError(
            f"CoNLL-2003 reader: option 'bio_columns' names {', '.join(missing)}, "
            f"not among the columns {', '.join(columns)}"
        )
    _check_rule(bio_rule, "CoNLL-2003 reader")
    sentences = []
    words: list[str] = []
    lines: list[int] = []
    tags: list[list[str]] = []

    def close() -> None:
        if words:
            by_column = {c: tuple(t[i] for t in tags) for i, c in enumerate(columns)}
            for c in bio_columns:
                by_column[c] = check_bio(by_column[c], bio_rule, source, lines)
            sentences.append(Sentence(tuple(words), by_column, source, tuple(lines)))
        words.clear(), lines.clear(), tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) != 1 + len(columns):
            raise TaskDataError(
                f"{source}, line {number}: CoNLL-2003 record {line.strip()!r} has "
                f"{len(fields)} fields, expected {1 + len(columns)} "
                f"(word, {', '.join(columns)})"
            )
        words.append(fields[0])
        lines.append(number)
        tags.append(fields[1:])
    close()
    return sentences


def read_conll2003(
    path: str | Path,
    columns: Sequence[str] = CONLL2003_COLUMNS,
    bio_columns: Sequence[str] = ("ner",),
    bio_rule: BioRule = "repair",
) -> list[Sentence]:
    """Sentences of the CoNLL-2003 column-format file ``path`` (see :func:`parse_conll2003`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CoNLL-2003 file {path} does not exist")
    return parse_conll2003(
        path.read_text(encoding="utf-8"), str(path), columns, bio_columns, bio_rule
    )


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
            for tag, line in zip(_column(sentence, column), sentence.lines, strict=True):
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
        known = {t.name for t in self.tasks}
        unknown = sorted(set(names) - known)
        if unknown:
            raise DatasetError(
                f"dataset '{self.name}' has no task(s) {', '.join(unknown)}; "
                f"its tasks are {', '.join(t.name for t in self.tasks)}"
            )
        keep_lm = self.lm is not None and self.lm[0] in names

        def keep(split: TensorSplit) -> TensorSplit:
            targets = {t: split.targets[t] for t in names if t in split.targets}
            return TensorSplit(split.inputs, targets, split.name)

        return TextBundle(
            self.name,
            keep(self.train),
            keep(self.val),
            keep(self.test),
            [t for t in self.tasks if t.name in names],
            self.encoder,
            dict(self.info),
            self.lm if keep_lm else None,
            self.vocabularies,
        )


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


__all__ = [
    "CONLL2003_COLUMNS",
    "MASK_ID",
    "PAD_ID",
    "UNK_ID",
    "Sentence",
    "TextBundle",
    "Vocabulary",
    "check_bio",
    "conll2003_dataset",
    "conllu_dataset",
    "encode_sentences",
    "label_vocabulary",
    "parse_conll2003",
    "parse_conllu",
    "read_conll2003",
    "read_conllu",
    "tagging_bundle",
    "word_vocabulary",
]
