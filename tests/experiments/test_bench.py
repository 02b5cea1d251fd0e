"""``mtlkit bench`` as documented: runs without extras (TorchJD only when installed, with a
note), and a missing extra's install hint keeps its ``[extra]`` through Rich."""

from __future__ import annotations

import sys

import pytest

from mtlkit.cli import main
from mtlkit.experiments.bench import paired_quartiles

SMALL = ["bench", "--tasks", "2", "--methods", "ew,upgrad", "--models", "mlp", "--repeats", "1"]


def test_bench_runs_without_torchjd_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torchjd", None)  # not installed
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert "TorchJD is not installed" in out and "pip install 'mtlkit[bench]'" in out
    assert "upgrad" in out and "torchjd" not in out.split("ratio to")[-1]


def test_asking_for_torchjd_without_it_prints_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torchjd", None)
    assert main([*SMALL, "--torchjd"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'mtlkit[bench]'" in err  # Rich would read [bench] as markup


def test_paired_quartiles_pair_each_round_with_its_baseline() -> None:
    """Ratios 2, 4, 3, 4 by round; quartiles by statistics.quantiles' default (exclusive)."""
    assert paired_quartiles([2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 2.0, 2.0]) == [2.25, 4.0]
    # the same samples paired the other way round give other ratios (8, 6, 2, 1)
    assert paired_quartiles([8.0, 6.0, 4.0, 2.0], [1.0, 1.0, 2.0, 2.0]) == [1.25, 7.5]
    assert all(q != q for q in paired_quartiles([1.0], [1.0]))  # one round: no spread
