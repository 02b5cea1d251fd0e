"""Fixtures of the weighting tests."""

from __future__ import annotations

import pytest

from mtlkit.weighting._engine import gram as gram_mod


@pytest.fixture
def layerwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer-wise Gramian path for every model, convolutional ones included (on CPU the
    engine takes one backward pass per task for those: ``passes_pay``; the layer-wise rules
    for convolutions and batch norms are what a GPU runs)."""
    monkeypatch.setattr(gram_mod, "passes_pay", lambda model, inputs: False)
