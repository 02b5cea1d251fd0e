"""The GLUE-format TSV loader, on the tiny files that ship with mtlkit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mtlkit.data import load_dataset
from mtlkit.data.glue import GLUE_FORMATS, PAD, SAMPLES, SEP, UNK, Vocabulary, read_tsv, tokenize
from mtlkit.data.multi import MultiInputData, TaskBatches
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.experiments.run import build_run


def test_shipped_samples_load_as_three_tasks_sharing_one_token_encoder() -> None:
    data = load_dataset("glue")
    assert isinstance(data, MultiInputData)
    assert [t.name for t in data.tasks] == ["sst2", "mrpc", "rte"]
    assert all(t.num_outputs == 2 for t in data.tasks)
    assert {t: len(s) for t, s in data.train.items()} == {"sst2": 12, "mrpc": 8, "rte": 8}
    assert {t: len(s) for t, s in data.val.items()} == {"sst2": 6, "mrpc": 4, "rte": 4}
    assert data.info["test_is_dev"] == []
    name, params = data.encoder
    assert name == "token" and params["vocab_size"] == len(data.info["vocabulary"])
    assert data.step_mode == "single"  # MT-DNN: one task's batch per step


def test_labels_follow_the_glue_label_columns() -> None:
    texts, labels = read_tsv(SAMPLES / "rte" / "train.tsv", GLUE_FORMATS["rte"])
    assert texts[0] == ("A man is playing a guitar on the stage .", "A man plays music .")
    assert labels[:2] == [0, 1]  # entailment, not_entailment
    texts, labels = read_tsv(SAMPLES / "mrpc" / "train.tsv", GLUE_FORMATS["mrpc"])
    assert len(texts[0]) == 2 and labels[:2] == [1, 0]  # the 'Quality' column


def test_pairs_are_joined_by_the_separator_and_padded() -> None:
    data = load_dataset("glue", tasks=["rte", "sst2"], max_length=24)
    vocab = data.info["vocabulary"]
    tokens = data.train["rte"].inputs[0]
    ids = [vocab.index(t) for t in tokenize("A man is playing a guitar on the stage .")]
    assert tokens[: len(ids)].tolist() == ids and int(tokens[len(ids)]) == SEP
    assert tokens.shape == (24,) and int(tokens[-1]) == PAD
    assert (data.train["sst2"].inputs == SEP).sum() == 0  # single sentences have no separator


def test_the_vocabulary_comes_from_training_text_only() -> None:
    vocab = Vocabulary(["a warm film", "a cold film"])
    assert vocab.itos[:3] == ["[PAD]", "[UNK]", "[SEP]"]
    assert vocab.itos[3:5] == ["a", "film"]  # by frequency, then alphabetically
    assert vocab.encode(("A WARM, unseen film",), 10) == [3, 6, UNK, UNK, 4]
    assert vocab.encode(("a film", "a film"), 4) == [3, 4, SEP, 3]  # cut to max_length
    data = load_dataset("glue", tasks=["sst2"])
    assert "summer" not in data.info["vocabulary"]  # a dev-only word
    assert UNK in data.val["sst2"].inputs


def test_a_config_trains_the_glue_tasks_mt_dnn_style() -> None:
    run = build_run(
        {
            "data": {"name": "glue", "params": {"max_length": 16}, "batch_size": 4},
            "train": {"epochs": 1, "sampler": {"name": "round_robin"}},
        }
    )
    assert len(run.model.task_names) == 3
    trainer = run.trainer(progress=False)
    loader = run.loader("train", train=True)
    assert len(loader) == 3 + 2 + 2
    firsts = [next(iter(step)) for step in loader]
    assert firsts[:3] == ["sst2", "mrpc", "rte"]
    losses = trainer.train_step(next(iter(loader)))
    assert set(losses) == {"sst2"}
    mixed = TaskBatches({t: run.data.train[t][torch.arange(2)] for t in ["sst2", "mrpc", "rte"]})
    assert set(trainer.train_step(mixed)) == {"sst2", "mrpc", "rte"}
    results = trainer.evaluate(run.loader("test"))
    assert set(results) == {"sst2", "mrpc", "rte"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results.values())


def copy_samples(tmp_path: Path) -> Path:
    root = tmp_path / "glue"
    shutil.copytree(SAMPLES, root)
    return root


def test_without_a_labelled_test_file_the_dev_set_is_the_test_set(tmp_path: Path) -> None:
    root = copy_samples(tmp_path)
    (root / "sst2" / "test.tsv").unlink()
    (root / "rte" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tA b .\tA .\n")
    data = load_dataset("glue", root=str(root))
    assert data.info["test_is_dev"] == ["sst2", "rte"]
    assert torch.equal(data.test["sst2"].inputs, data.val["sst2"].inputs)
    assert len(data.test["mrpc"]) == 2


def test_a_missing_column_in_the_header_names_file_line_and_column(tmp_path: Path) -> None:
    root = copy_samples(tmp_path)
    path = root / "mrpc" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("#2 String", "#2 Text")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"mrpc/train\.tsv, line 1: missing column\(s\) '#2 String'"
    ):
        load_dataset("glue", root=str(root))


def test_a_missing_label_column_or_field_names_the_line(tmp_path: Path) -> None:
    root = copy_samples(tmp_path)
    path = root / "sst2" / "dev.tsv"
    path.write_text("sentence\n" + "a fine film\n")
    with pytest.raises(DatasetError, match=r"dev\.tsv, line 1: missing column 'label'"):
        load_dataset("glue", root=str(root), tasks=["sst2"])
    path.write_text("sentence\tlabel\na fine film\t1\na short row\n")
    with pytest.raises(DatasetError, match=r"dev\.tsv, line 3: missing column\(s\) 'label'"):
        load_dataset("glue", root=str(root), tasks=["sst2"])
    path.write_text("sentence\tlabel\na fine film\tgood\n")
    with pytest.raises(DatasetError, match=r"line 2: column 'label' has label 'good'"):
        load_dataset("glue", root=str(root), tasks=["sst2"])


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="unknown task\\(s\\) mnli_x; available: sst2"):
        load_dataset("glue", tasks=["mnli_x"])
    with pytest.raises(ConfigError, match="option 'max_length' must be ≥ 2"):
        load_dataset("glue", max_length=1)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("glue", root="/nonexistent/glue")
