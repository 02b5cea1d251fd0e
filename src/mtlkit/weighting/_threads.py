"""The solvers' numpy and scipy BLAS on one thread while they run.

The problems of :mod:`mtlkit.weighting._qp` are T × T: far too small for a second BLAS thread
to help, and on a loaded machine the threads that numpy's and scipy's OpenBLAS wake for each
small product stall the step (a 40 × 40 eigen-decomposition measured at 0.1 ms on one thread
took 18 ms with two threads on a busy host). :func:`solver_threads` sets those two libraries
to one thread for the duration of a solve and restores their settings after. torch's own
threads are not touched. Without ``threadpoolctl`` (a small pure-Python package) it does
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LIBRARIES: list[Any] | None = None


def _numpy_scipy_blas() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries numpy and scipy load (once)."""
    global _LIBRARIES
    if _LIBRARIES is None:
        try:
            import scipy.optimize  # noqa: F401  (loads scipy's BLAS; the solvers use it)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _LIBRARIES = []
        else:
            _LIBRARIES = [
                lib
                for lib in ThreadpoolController().lib_controllers
                if lib.user_api == "blas" and ("numpy" in lib.filepath or "scipy" in lib.filepath)
            ]
    return _LIBRARIES


@contextmanager
def solver_threads() -> Iterator[None]:
    """Within the block, numpy's and scipy's BLAS use one thread (see the module docstring)."""
    changed = []
    for lib in _numpy_scipy_blas():
        threads = lib.num_threads
        if threads != 1:
            lib.set_num_threads(1)
            changed.append((lib, threads))
    try:
        yield
    finally:
        for lib, threads in changed:
            lib.set_num_threads(threads)
