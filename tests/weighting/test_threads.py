"""The solvers run with numpy's and scipy's BLAS on one thread, and leave the setting as it was."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import UPGrad
from mtlkit.weighting._threads import _numpy_scipy_blas, solver_threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def test_one_blas_thread_inside_the_block_and_the_old_setting_after() -> None:
    libraries = _numpy_scipy_blas()
    if not libraries:
        pytest.skip("numpy and scipy load no BLAS that threadpoolctl controls here")
    lib = libraries[0]
    before = lib.num_threads
    lib.set_num_threads(2)
    try:
        with solver_threads():
            assert all(x.num_threads == 1 for x in libraries)
        assert lib.num_threads == 2
    finally:
        lib.set_num_threads(before)


def test_a_gramian_method_solves_inside_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    method = UPGrad()
    original = method.weights_from_gram

    def spy(gram: torch.Tensor) -> torch.Tensor:
        seen.append(max((x.num_threads for x in _numpy_scipy_blas()), default=1))
        return original(gram)

    monkeypatch.setattr(method, "weights_from_gram", spy)
    method.aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64))
    assert seen == [1]
