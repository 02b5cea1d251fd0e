"""Assertions shared by the weighting tests (not a test module)."""

from __future__ import annotations

from torch import Tensor


def assert_non_conflicting(jac: Tensor, update: Tensor, weights: Tensor) -> None:
    """g_iᵀx ≥ −1e-10 ‖g_i‖ × (the size of the terms summed into x, Σ_j |α_j| ‖g_j‖)."""
    norms = jac.norm(dim=1)
    scale = norms * max(float(update.norm()), float((weights.abs() * norms).sum()))
    assert bool(((jac @ update) >= -1e-10 * scale).all()), (jac @ update) / scale
