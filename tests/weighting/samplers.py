"""Shared Jacobian samplers for the weighting tests: random and hard cases, in float64."""

from __future__ import annotations

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
