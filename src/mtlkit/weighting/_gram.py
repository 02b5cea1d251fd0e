"""G prepared once for the solvers of :mod:`mtlkit.weighting._qp` (its docstring, steps 1-3):
float64, scaled, zero-gradient tasks taken out, the rank-truncated cosine matrix of the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import TaskDataError

#: a task gradient this many times smaller than the largest one is a zero gradient
ZERO_NORM = 1e-10
#: eigenvalues of the cosine matrix at or below RANK_RTOL · n · eps · λ_max are rounding
RANK_RTOL = 10.0
#: float64 machine epsilon, the default precision of G
EPS64 = float(np.finfo(np.float64).eps)


def gram_eps(dtype: torch.dtype) -> float:
    """The machine epsilon of the dtype a Gram matrix was computed in (float64's at least)."""
    return max(float(torch.finfo(dtype).eps), EPS64) if dtype.is_floating_point else EPS64


@dataclass(frozen=True)
class Gram:
    """G prepared once for the solvers (see the module docstring, steps 1-3).

    ``live`` indexes the tasks with a non-zero gradient, ``zero`` the others; ``d`` holds the
    live gradient norms (of G / ``scale``); ``factor`` is R (r × n, n = len(live)) with
    RᵀR = C_r, the rank-truncated cosine matrix of the live tasks.
    """

    matrix: np.ndarray  # G / scale, symmetric
    scale: float
    live: np.ndarray
    zero: np.ndarray
    d: np.ndarray
    factor: np.ndarray
    eps: float

    @classmethod
    def of(cls, gram: np.ndarray, eps: float = EPS64) -> Gram:
        g = np.asarray(gram, dtype=np.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"the Gram matrix must be square, got shape {g.shape}")
        if not np.isfinite(g).all():
            raise ValueError("the Gram matrix has NaN or inf entries")
        return cls._prepared(g, eps)

    @classmethod
    def _prepared(cls, g: np.ndarray, eps: float) -> Gram:
        """Steps 1-3 on a finite, square float64 ``g``. Written with array methods and
        ufuncs rather than numpy's Python-level helpers (``np.clip``, ``np.outer``, ``np.ix_``):
        a solve runs once per step between two backward passes, with cold caches, where each
        helper's Python frames cost more than the T × T arithmetic."""
        g = (g + g.T) / 2
        t = g.shape[0]
        diag = np.maximum(g.diagonal(), 0.0)
        scale = float(diag.max(initial=0.0))
        if scale > 0.0:
            g = g / scale
            diag = diag / scale
        is_live = diag > ZERO_NORM**2 if scale > 0.0 else np.zeros(t, dtype=bool)
        live, zero = is_live.nonzero()[0], (~is_live).nonzero()[0]
        d = np.sqrt(diag[live])
        block = g if len(live) == t else g[live[:, None], live[None, :]]
        cosine = block / (d[:, None] * d[None, :])
        return cls(g, scale, live, zero, d, truncated_factor(cosine, eps), eps)

    def rescaled(self, n: np.ndarray) -> Gram:
        """G of the gradients g_i / n_i, prepared with the same precision."""
        return Gram.of(self.matrix / np.outer(n, n), self.eps)

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    @property
    def cosine(self) -> np.ndarray:
        """C_r = RᵀR, the matrix the solvers solve on (live tasks only)."""
        return self.factor.T @ self.factor


def truncated_factor(cosine: np.ndarray, eps: float) -> np.ndarray:
    """R (r × n) with RᵀR the PSD matrix ``cosine`` without its rounding-level eigenvalues."""
    n = cosine.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    eigenvalues, vectors = np.linalg.eigh(cosine)
    top = max(float(eigenvalues[-1]), 0.0)
    keep = eigenvalues > RANK_RTOL * n * eps * top
    if keep.all():
        return np.sqrt(eigenvalues)[:, None] * vectors.T
    return np.sqrt(eigenvalues[keep])[:, None] * vectors[:, keep].T


def cosine_pinv_ones(p: Gram) -> tuple[np.ndarray, np.ndarray]:
    """C⁺1 and an orthonormal basis (columns) of the null space of C, for the live tasks.

    A linear system on C (IMTL-G, ConFIG: "the same cosine with every task gradient") is read
    from G's digits: an eigen-direction whose eigenvalue is below √(n·eps)·λ_max would carry a
    relative error above √(n·eps) into the answer (the eigenvalue itself is known only to
    n·eps·λ_max), so it counts as exact collinearity, part of the null space. The solution set
    of such a system is then explicit, and a least-norm choice in it is canonical: the same for
    every task order, and unchanged when every gradient is scaled alike.
    """
    n = len(p.live)
    if n == 0:
        return np.zeros(0), np.zeros((0, 0))
    eigenvalues, vectors = np.linalg.eigh(p.cosine)
    top = max(float(eigenvalues[-1]), 0.0)
    keep = eigenvalues > math.sqrt(n * p.eps) * top
    kept = vectors[:, keep]
    along = kept.T @ np.ones(n)  # 1 in the kept eigenbasis; rounding-level parts are 0
    along[np.abs(along) <= RANK_RTOL * n * p.eps * math.sqrt(n)] = 0.0
    return kept @ (along / eigenvalues[keep]), vectors[:, ~keep]


# ---------------------------------------------------------------------------- torch glue


def gram_to_numpy(gram: Tensor, method: object) -> Gram:
    """G prepared for the solvers (:class:`Gram`), with the precision of ``gram``'s dtype; a
    TaskDataError naming ``method`` if it is not finite."""
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"the Gram matrix must be square, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise TaskDataError(f"{method}: the task gradients contain NaN or inf")
    return Gram._prepared(g, gram_eps(gram.dtype))


def weights_to_torch(weights: np.ndarray, like: Tensor) -> Tensor:
    """Task weights as a float64 tensor on ``like``'s device."""
    return torch.as_tensor(weights, dtype=torch.float64, device=like.device)
