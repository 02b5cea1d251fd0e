"""Shared Jacobian samplers for the weighting tests: random and hard cases, in float64."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor


def random_jacobian(t: int, p: int, seed: int = 0) -> Tensor:
    """A random T × P Jacobian."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, p, generator=g, dtype=torch.float64)


def nearly_collinear(t: int, p: int, seed: int = 0, eps: float = 1e-6) -> Tensor:
    """Rows all close to one direction, with positive scales and tiny perturbations."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(p, generator=g, dtype=torch.float64)
    scales = torch.rand(t, 1, generator=g, dtype=torch.float64) + 0.5
    return scales * base + eps * torch.randn(t, p, generator=g, dtype=torch.float64)


def dominant_norm(t: int, p: int, seed: int = 0, ratio: float = 1e4) -> Tensor:
    """Random rows, the first scaled ``ratio`` times larger than the others."""
    jac = random_jacobian(t, p, seed)
    jac[0] *= ratio
    return jac


def with_zero_row(t: int, p: int, seed: int = 0) -> Tensor:
    """Random rows with the last one exactly zero."""
    jac = random_jacobian(t, p, seed)
    jac[-1] = 0.0
    return jac


def strongly_conflicting(t: int, p: int, seed: int = 0) -> Tensor:
    """Rows whose pairwise cosines are close to −1/(T−1), the most conflicting possible.

    Needs P ≥ T (T orthonormal directions are centred, so the rows sum to zero before scaling).
    """
    if p < t:
        raise ValueError(f"strongly_conflicting needs P ≥ T, got P={p}, T={t}")
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(p, t, generator=g, dtype=torch.float64)).Q.T  # t × p
    centred = basis - basis.mean(dim=0, keepdim=True)
    return centred * (torch.rand(t, 1, generator=g, dtype=torch.float64) + 0.5)


HARD_CASES = {
    "random": random_jacobian,
    "nearly_collinear": nearly_collinear,
    "dominant_norm": dominant_norm,
    "zero_row": with_zero_row,
    "conflicting": strongly_conflicting,
}


# ---------------------------------------------------------------------------- degenerate rows
# Each family puts one degenerate row at position ``at`` of a random T × P Jacobian, so a test
# can move it through every position (a solver that is right only by luck of the order fails).


def _with_row(jac: Tensor, row: Tensor, at: int) -> Tensor:
    out = jac.clone()
    out[at] = row
    return out


def zero_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is exactly zero (a converged task, a batch without its labels)."""
    jac = random_jacobian(t, p, seed)
    return _with_row(jac, torch.zeros(p, dtype=jac.dtype), at)


def duplicate_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is an exact copy of another row."""
    jac = random_jacobian(t, p, seed)
    return _with_row(jac, jac[(at + 1) % t].clone(), at)


def parallel_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is another row scaled by 3.7 (parallel, different norm)."""
    jac = random_jacobian(t, p, seed)
    return _with_row(jac, 3.7 * jac[(at + 1) % t], at)


def collinear_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is another row plus a perturbation 1e-6 of its norm."""
    jac = random_jacobian(t, p, seed)
    g = torch.Generator().manual_seed(seed + 7919)
    noise = torch.randn(p, generator=g, dtype=jac.dtype)
    base = jac[(at + 1) % t]
    return _with_row(jac, base + 1e-6 * base.norm() * noise / noise.norm(), at)


def huge_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is 1e6 times larger than the others."""
    jac = random_jacobian(t, p, seed)
    return _with_row(jac, 1e6 * jac[at], at)


def tiny_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is 1e-6 times smaller than the others (small, but not zero)."""
    jac = random_jacobian(t, p, seed)
    return _with_row(jac, 1e-6 * jac[at], at)


def stationary_row_at(t: int, p: int, seed: int, at: int) -> Tensor:
    """Row ``at`` is minus a positive combination of the others: 0 is in the convex hull of the
    rows (a Pareto-stationary point; the dual cone {x : Jx ≥ 0} is the orthogonal complement)."""
    jac = random_jacobian(t, p, seed)
    g = torch.Generator().manual_seed(seed + 104729)
    c = torch.rand(t, generator=g, dtype=jac.dtype) + 0.1
    rest = torch.cat([jac[:at], jac[at + 1 :]])
    return _with_row(jac, -(c[: t - 1] @ rest), at)


def rank_deficient(t: int, p: int, seed: int, at: int = 0) -> Tensor:
    """T rows in a space of dimension min(P, T − 2): more tasks than directions."""
    g = torch.Generator().manual_seed(seed)
    rank = max(1, min(p, t - 2))
    coef = torch.randn(t, rank, generator=g, dtype=torch.float64)
    basis = torch.randn(rank, p, generator=g, dtype=torch.float64)
    return coef @ basis


DEGENERATE = {
    "zero_row": zero_row_at,
    "duplicate_row": duplicate_row_at,
    "parallel_row": parallel_row_at,
    "collinear_row": collinear_row_at,
    "huge_row": huge_row_at,
    "tiny_row": tiny_row_at,
    "stationary": stationary_row_at,
    "rank_deficient": rank_deficient,
}


def hard_jacobians(
    sizes: tuple[tuple[int, int], ...] = ((2, 6), (4, 3), (5, 30), (10, 40)),
) -> Iterator[Any]:
    """Every HARD_CASES sampler at a few sizes, as pytest parameters with readable ids."""
    for name, sampler in HARD_CASES.items():
        for t, p in sizes:
            if name == "conflicting" and p < t:
                continue
            yield pytest.param(sampler(t, p, seed=t + p), id=f"{name}-{t}x{p}")


#: the hard cases at a few sizes (conflicting ones need P ≥ T)
HARD = list(hard_jacobians())
