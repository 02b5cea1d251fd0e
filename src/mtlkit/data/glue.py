"""GLUE-format TSV files: sentence and sentence-pair classification tasks, MT-DNN style.

The GLUE benchmark (Wang, Singh, Michael, Hill, Levy & Bowman 2019, "GLUE: A Multi-Task
Benchmark and Analysis Platform for Natural Language Understanding", ICLR) ships each task as
``train.tsv`` / ``dev.tsv`` with a header row. This loader reads the layouts of its
headed tasks (:data:`GLUE_FORMATS`: SST-2 ``sentence``/``label``, MRPC ``#1 String``/``#2
String``/``Quality``, RTE and QNLI pairs with text labels, QQP ``question1``/``question2``/
``is_duplicate``) and builds one :class:`~mtlkit.data.multi.MultiInputData`: each task its own
dataset, all sharing one token encoder, as in MT-DNN (Liu, He, Chen & Gao 2019, "Multi-Task
Deep Neural Networks for Natural Language Understanding", ACL).

Text is lower-cased and split on white space, with punctuation split off; the vocabulary is
built on the training files of all tasks (ids 0 padding, 1 unknown, 2 the separator ``[SEP]``
that joins the two sentences of a pair). Every sequence is cut or padded to ``max_length``,
so all tasks' batches stack into one forward pass in mixed steps.

Splits: ``train.tsv`` trains, ``dev.tsv`` validates; ``test.tsv`` tests when present and
labelled (GLUE's own test files have no labels: without a labelled ``test.tsv`` the dev set is
also the test set, and ``info["test_is_dev"]`` says so). Tiny files in the GLUE layout ship in
``mtlkit/data/samples/glue`` for tests and examples; they are far too small to learn from.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlkit.data.base import DATASETS, TensorSplit
from mtlkit.data.multi import MultiInputData
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.files import read_text
from mtlkit.tasks import Task

PAD, UNK, SEP = 0, 1, 2
SPECIALS = ("[PAD]", "[UNK]", "[SEP]")
SAMPLES = Path(__file__).parent / "samples" / "glue"

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class GlueFormat:
    """A GLUE task's layout: its text column(s), its label column and the label values in
    class order (None: the labels are already 0..C−1)."""

    text: tuple[str, ...]
    label: str
    classes: tuple[str, ...] | None = None


GLUE_FORMATS: dict[str, GlueFormat] = {
    "sst2": GlueFormat(("sentence",), "label", ("0", "1")),
    "mrpc": GlueFormat(("#1 String", "#2 String"), "Quality", ("0", "1")),
    "rte": GlueFormat(("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "qnli": GlueFormat(("question", "sentence"), "label", ("entailment", "not_entailment")),
    "qqp": GlueFormat(("question1", "question2"), "is_duplicate", ("0", "1")),
}


def tokenize(text: str) -> list[str]:
    """Lower-cased words, punctuation marks as tokens of their own."""
    return _TOKEN.findall(text.lower())


def read_tsv(
    path: str | Path, fmt: GlueFormat, *, require_labels: bool = True
) -> tuple[list[tuple[str, ...]], list[int] | None]:
    """The texts and class indices of a GLUE-format TSV file with a header row.

    Errors name the file, the line and the missing column or bad value. With
    ``require_labels=False`` a file without the label column gives labels None.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"GLUE file {path} does not exist")
    text = read_text(path, "GLUE file", DatasetError)
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: the file is empty (a GLUE TSV starts with a header)")
        missing = [c for c in fmt.text if c not in header]
        if missing:
            raise DatasetError(
                f"{path}, line 1: missing column(s) {', '.join(repr(c) for c in missing)} "
                f"in the header (columns: {', '.join(header)})"
            )
        has_label = fmt.label in header
        if not has_label and require_labels:
            raise DatasetError(
                f"{path}, line 1: missing column '{fmt.label}' (the labels) in the header "
                f"(columns: {', '.join(header)})"
            )
        cols = [header.index(c) for c in fmt.text]
        label_col = header.index(fmt.label) if has_label else None
        texts: list[tuple[str, ...]] = []
        labels: list[int] = []
        for line, row in enumerate(reader, start=2):
            if not row or row == [""]:
                continue
            width = max([*cols, label_col if label_col is not None else 0]) + 1
            if len(row) < width:
                absent = [header[i] for i in [*cols, label_col] if i is not None and i >= len(row)]
                raise DatasetError(
                    f"{path}, line {line}: missing column(s) "
                    f"{', '.join(repr(c) for c in absent)} (the row has {len(row)} fields, "
                    f"the header {len(header)})"
                )
            texts.append(tuple(row[i] for i in cols))
            if label_col is not None:
                labels.append(_label(row[label_col], fmt, path, line))
    return texts, (labels if label_col is not None else None)


def _label(value: str, fmt: GlueFormat, path: Path, line: int) -> int:
    value = value.strip()
    if fmt.classes is not None and value in fmt.classes:
        return fmt.classes.index(value)
    allowed = ", ".join(fmt.classes) if fmt.classes else "0..C−1"
    raise DatasetError(
        f"{path}, line {line}: column '{fmt.label}' has label {value!r}; expected one of {allowed}"
    )


class Vocabulary:
    """Token ids from training text: the specials first, then tokens by frequency."""

    def __init__(self, texts: Sequence[str], min_freq: int = 1) -> None:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        kept = [t for t, c in counts.items() if c >= min_freq]
        kept.sort(key=lambda t: (-counts[t], t))
        self.itos = [*SPECIALS, *kept]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: tuple[str, ...], max_length: int) -> list[int]:
        """Token ids of one example (two sentences joined by [SEP]), cut to ``max_length``."""
        ids: list[int] = []
        for k, part in enumerate(text):
            if k:
                ids.append(SEP)
            ids.extend(self.stoi.get(tok, UNK) for tok in tokenize(part))
        return ids[:max_length]


def _tensor(vocab: Vocabulary, texts: list[tuple[str, ...]], max_length: int) -> torch.Tensor:
    out = torch.full((len(texts), max_length), PAD, dtype=torch.int64)
    for i, text in enumerate(texts):
        ids = vocab.encode(text, max_length) or [UNK]  # an empty text still has one token
        out[i, : len(ids)] = torch.tensor(ids)
    return out


@DATASETS.register("glue")
def glue(
    tasks: Sequence[str] = ("sst2", "mrpc", "rte"),
    root: str | None = None,
    max_length: int = 64,
    min_freq: int = 1,
    embedding_dim: int = 64,
    step_mode: str = "single",
    sampler: str | Mapping[str, Any] = "proportional",
    steps_per_epoch: int | None = None,
    epochs: int = 1,
    seed: int = 0,
) -> MultiInputData:
    """GLUE-format tasks read from ``root/<task>/{train,dev,test}.tsv`` (the shipped samples
    by default), sharing one ``token`` encoder; MT-DNN's single-task steps by default."""
    if isinstance(tasks, str) or not tasks:
        raise ConfigError("dataset 'glue': option 'tasks' must be a non-empty list of task names")
    unknown = [t for t in tasks if t not in GLUE_FORMATS]
    if unknown:
        raise ConfigError(
            f"dataset 'glue': option 'tasks': unknown task(s) {', '.join(unknown)}; "
            f"available: {', '.join(GLUE_FORMATS)}"
        )
    if max_length < 2:
        raise ConfigError(f"dataset 'glue': option 'max_length' must be ≥ 2, got {max_length}")
    if min_freq < 1:
        raise ConfigError(f"dataset 'glue': option 'min_freq' must be ≥ 1, got {min_freq}")
    base = Path(root) if root is not None else SAMPLES
    raw: dict[str, dict[str, tuple[list[tuple[str, ...]], list[int]]]] = {}
    test_is_dev: list[str] = []
    for name in tasks:
        fmt = GLUE_FORMATS[name]
        files = {"train": base / name / "train.tsv", "val": base / name / "dev.tsv"}
        raw[name] = {}
        for split, path in files.items():
            texts, labels = read_tsv(path, fmt)
            if not texts:
                raise DatasetError(f"{path}: no examples")
            assert labels is not None
            raw[name][split] = (texts, labels)
        test_path = base / name / "test.tsv"
        labelled = None
        if test_path.is_file():
            texts, labels = read_tsv(test_path, fmt, require_labels=False)
            labelled = (texts, labels) if labels is not None and texts else None
        if labelled is None:
            test_is_dev.append(name)
        raw[name]["test"] = labelled or raw[name]["val"]  # type: ignore[assignment]
    vocab = Vocabulary(
        [part for name in tasks for text in raw[name]["train"][0] for part in text], min_freq
    )
    splits: dict[str, dict[str, TensorSplit]] = {"train": {}, "val": {}, "test": {}}
    task_list = []
    for name in tasks:
        fmt = GLUE_FORMATS[name]
        n_classes = len(fmt.classes or ())
        task_list.append(Task(name, "classification", n_classes, metrics=["accuracy", "macro_f1"]))
        for split, (texts, labels) in raw[name].items():
            splits[split][name] = TensorSplit(
                _tensor(vocab, texts, max_length),
                {name: torch.tensor(labels, dtype=torch.int64)},
                split,
            )
    encoder = (
        "token",
        {"vocab_size": len(vocab), "embedding_dim": embedding_dim, "pool": "mean"},
    )
    return MultiInputData(
        "glue",
        task_list,
        splits["train"],
        splits["val"],
        splits["test"],
        encoder,
        info={"vocabulary": vocab.itos, "test_is_dev": test_is_dev, "root": str(base)},
        step_mode=step_mode,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        seed=seed,
    )
