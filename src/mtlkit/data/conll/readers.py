"""Token-tagging corpora: the CoNLL-U and CoNLL-2003 readers and the BIO rule.

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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mtlkit.errors import ConfigError, DatasetError, MissingExtraError, TaskDataError
from mtlkit.files import read_text

__all__ = [
    "CONLL2003_COLUMNS",
    "CONLLU_FIELDS",
    "BioRule",
    "Sentence",
    "check_bio",
    "parse_conll2003",
    "parse_conllu",
    "read_conll2003",
    "read_conllu",
]

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

    def column(self, name: str) -> tuple[str | None, ...]:
        """The tags of column ``name``; a column the sentence lacks is a ConfigError."""
        if name not in self.tags:
            raise ConfigError(
                f"{self.source}: no tag column '{name}'; columns: {', '.join(self.tags)}"
            )
        return self.tags[name]


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
    text = read_text(path, "CoNLL-U file", DatasetError)
    return parse_conllu(text, str(path), columns, bio_columns, bio_rule)


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
    text = read_text(path, "CoNLL-2003 file", DatasetError)
    return parse_conll2003(text, str(path), columns, bio_columns, bio_rule)
