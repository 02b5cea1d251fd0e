"""A lean core: ``import mtlkit`` loads none of the optional or slow-to-import packages, and
the optional ones fail with a message that names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtlkit.errors import MissingExtraError, require

HEAVY = ("sklearn", "matplotlib", "scipy.optimize", "optuna", "tensorboard", "wandb", "mlflow")


def test_import_mtlkit_loads_no_heavy_or_optional_package() -> None:
    code = (
        "import sys, mtlkit, mtlkit.cli, mtlkit.experiments.report; "
        f"print([m for m in sys.modules if m.startswith({HEAVY!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_weighting_solvers_still_reach_scipy_when_they_run() -> None:
    import torch

    from mtlkit.weighting import get

    method = get("cagrad")
    method.aggregate(torch.tensor([[1.0, 0.0], [-0.5, 1.0]]))  # brentq, imported on use
    assert "scipy.optimize" in sys.modules


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.pyplot"):  # as if not installed (nor imported)
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"'matplotlib': pip install 'mtlkit\[report\]'"):
        require("matplotlib.pyplot", "report", "the report's plots")
    assert require("json", "none", "-").dumps([]) == "[]"
