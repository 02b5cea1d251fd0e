"""The Turkish Web Treebank: three tagging tasks on one token encoder.

The CoNLL-U files shipped by the ``turkish-treebanks`` package (Google Research, "Turkish Web
Treebank"; optional extra ``mtlkit[datasets]``): ``web.conllu`` (2,541 sentences, 32,422
words, forum and blog text) and ``wiki.conllu`` (2,310 sentences, 48,948 words, Wikipedia),
4,851 sentences and 81,370 words together. Words are the treebank's inflectional groups (a
derived word is split into several, e.g. ``Açık|la|nma|yan``). The files are found through
the distribution's installed-file list (:func:`importlib.metadata.files`) and read with the
``conllu`` parser (:func:`mtlkit.data.conll.read_conllu`).

Tasks, all ``tagging`` with metrics token accuracy and macro-F1:

- ``upos``: universal part of speech (14 tags);
- ``xpos``: the treebank's language-specific part of speech (45 tags);
- ``deprel``: the dependency relation to the head word (44 labels).

Splits are drawn at random by ``seed`` (fractions 80/10/10 by default) from the sentences
of the chosen ``sections``. ``max_length`` drops sentences with more words than that (they
are not cut: a truncated sentence would keep dependency labels whose heads are gone);
``max_sentences`` keeps only that many sentences after shuffling, for quick runs. Word
vocabulary: words seen ≥ ``min_freq`` times in the training split; others are ``<unk>``.
Tag sets are the treebank's full inventories (read from all its sentences, not the training
split), so a rare tag that falls only in the test split is not an error; this is safe
because the tag inventory is part of the annotation scheme, not learned from data.
With ``lm="masked"`` or ``"causal"`` the bundle adds the auxiliary task ``lm`` (see
:mod:`mtlkit.data.lm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtlkit.data.base import DATASETS
from mtlkit.data.conll import Sentence, TextBundle, label_vocabulary, read_conllu, tagging_bundle
from mtlkit.errors import DatasetError, MissingExtraError

DISTRIBUTION = "turkish-treebanks"
SECTIONS = ("web", "wiki")
COLUMNS = ("upos", "xpos", "deprel")


def treebank_file(section: str) -> Path:
    """The installed ``data/<section>.conllu`` of the ``turkish-treebanks`` distribution."""
    if section not in SECTIONS:
        raise DatasetError(
            f"dataset 'turkish_treebank': unknown section {section!r}; sections: web, wiki"
        )
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise MissingExtraError(DISTRIBUTION, "datasets", "the Turkish treebank") from None
    for file in files:
        if file.as_posix().endswith(f"data/{section}.conllu"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise DatasetError(
        f"dataset 'turkish_treebank': the {DISTRIBUTION} installation has no "
        f"data/{section}.conllu; reinstall it"
    )


@lru_cache(maxsize=4)
def read_section(section: str) -> tuple[Sentence, ...]:
    """All sentences of one section (parsed once per process)."""
    return tuple(read_conllu(treebank_file(section), COLUMNS))


@DATASETS.register("turkish_treebank")
def turkish_treebank(
    seed: int = 0,
    sections: Sequence[str] = SECTIONS,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_length: int | None = None,
    max_sentences: int | None = None,
    min_freq: int = 2,
    lm: Literal["none", "masked", "causal"] = "none",
    encoder: dict[str, Any] | None = None,
) -> TextBundle:
    """The Turkish treebank's tagging tasks (see the module docstring)."""
    where = "dataset 'turkish_treebank'"
    if isinstance(sections, str):
        sections = [sections]
    if not sections or len(set(sections)) != len(sections):
        raise DatasetError(f"{where}: option 'sections' must name distinct sections of web, wiki")
    if len(fractions) != 3 or min(fractions) <= 0 or sum(fractions) > 1.0001:
        raise DatasetError(
            f"{where}: option 'fractions' must be three positive shares summing to ≤ 1, "
            f"got {tuple(fractions)}"
        )
    if max_length is not None and max_length < 1:
        raise DatasetError(f"{where}: option 'max_length' must be ≥ 1, got {max_length}")
    if max_sentences is not None and max_sentences < 3:
        raise DatasetError(f"{where}: option 'max_sentences' must be ≥ 3, got {max_sentences}")
    everything = [s for section in sections for s in read_section(section)]
    pool = [s for s in everything if max_length is None or len(s) <= max_length]
    order = np.random.default_rng(seed).permutation(len(pool))
    if max_sentences is not None:
        order = order[:max_sentences]
    n_train = int(fractions[0] * len(order))
    n_val = int(fractions[1] * len(order))
    n_test = int(fractions[2] * len(order))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val : n_train + n_val + n_test],
    }
    for name, idx in parts.items():
        if len(idx) == 0:
            raise DatasetError(
                f"{where}: the {name} split is empty ({len(pool)} sentences after max_length, "
                f"{len(order)} kept)"
            )
    splits = {name: [pool[i] for i in idx] for name, idx in parts.items()}
    label_sets = {c: label_vocabulary(everything, c) for c in COLUMNS}
    bundle = tagging_bundle(
        "turkish_treebank",
        splits,
        COLUMNS,
        min_freq=min_freq,
        lm=lm,
        encoder=encoder,
        label_sets=label_sets,
    )
    bundle.info["sections"] = list(sections)
    return bundle


__all__ = ["COLUMNS", "SECTIONS", "read_section", "treebank_file", "turkish_treebank"]
