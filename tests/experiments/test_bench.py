"""``mtlkit bench`` as documented: runs without extras (TorchJD only when installed, with a
note), and a missing extra's install hint keeps its ``[extra]`` through Rich."""

from __future__ import annotations

import sys

import pytest

from mtlkit.cli import main

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
