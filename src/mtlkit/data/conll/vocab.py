"""Vocabularies of words and of tags, read from a training split.

Word vocabularies start with id 0 = padding (``<pad>``), 1 = unknown word (``<unk>``) and
2 = ``<mask>`` (for masked language modelling, :mod:`mtlkit.data.lm`); an unseen word maps to
``<unk>``. Label vocabularies have no unknown item: a tag outside them has no id, and the
encoder (:func:`mtlkit.data.conll.encode_sentences`) reports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from mtlkit.data.conll.readers import Sentence
from mtlkit.errors import ConfigError

__all__ = [
    "MASK",
    "MASK_ID",
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "WORD_SPECIALS",
    "Vocabulary",
    "label_vocabulary",
    "word_vocabulary",
]

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
WORD_SPECIALS = (PAD, UNK, MASK)


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
    tags = {t for s in sentences for t in s.column(column) if t is not None}
    if not bio:
        return Vocabulary(sorted(tags))
    types = sorted({t[2:] for t in tags if t != "O"})
    return Vocabulary(["O", *(f"{p}-{x}" for x in types for p in ("B", "I"))])
