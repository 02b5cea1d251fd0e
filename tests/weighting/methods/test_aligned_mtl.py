"""Aligned-MTL (Senushkin et al. 2023): eigen-alignment of the task gradients."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import AlignedMTL
from mtlkit.weighting.aligned_mtl import balance_transformation
from tests.weighting.samplers import HARD_CASES, random_jacobian


@pytest.mark.parametrize("t", [2, 3, 6, 10])
def test_full_rank_aligned_gram_is_a_multiple_of_identity(t: int) -> None:
    jac = random_jacobian(t, 20, seed=t)
    gram = jac @ jac.T
    b = balance_transformation(gram)
    aligned = b @ jac
    lam_min = torch.linalg.eigvalsh(gram).min()
    torch.testing.assert_close(aligned @ aligned.T, lam_min * torch.eye(t, dtype=torch.float64))


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_aligned_gram_is_a_multiple_of_a_projector_on_the_range(case: str) -> None:
    """(B J)(B J)ᵀ = c · Π with Π the projector onto the kept eigenvectors: A² = c A."""
    jac = HARD_CASES[case](5, 12, seed=1)
    gram = jac @ jac.T
    aligned_gram = balance_transformation(gram) @ gram @ balance_transformation(gram)
    eigvals = torch.linalg.eigvalsh(aligned_gram)
    c = eigvals.max()
    assert c > 0
    nonzero = eigvals[eigvals > 1e-6 * c]
    torch.testing.assert_close(nonzero, torch.full_like(nonzero, c.item()))
    torch.testing.assert_close(aligned_gram @ aligned_gram, c * aligned_gram)


def test_rank_deficient_gradients_align_on_their_span() -> None:
    basis = random_jacobian(2, 8, seed=2)
    mix = random_jacobian(5, 2, seed=3)
    jac = mix @ basis  # 5 tasks in a 2-dimensional span
    gram = jac @ jac.T
    aligned_gram = balance_transformation(gram) @ gram @ balance_transformation(gram)
    eigvals = torch.linalg.eigvalsh(aligned_gram)
    assert (eigvals[:3].abs() < 1e-9 * eigvals[-1]).all()
    torch.testing.assert_close(eigvals[3], eigvals[4])


def test_update_is_the_sum_of_the_aligned_gradients() -> None:
    jac = random_jacobian(4, 9, seed=4)
    update = AlignedMTL().aggregate(jac)
    torch.testing.assert_close(update, (balance_transformation(jac @ jac.T) @ jac).sum(dim=0))


def test_orthogonal_gradients_are_rescaled_to_the_smallest_norm() -> None:
    """For orthogonal gradients the aligned ones keep their directions, with norm σ_min."""
    jac = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    update = AlignedMTL().aggregate(jac)
    torch.testing.assert_close(update, torch.ones(3, dtype=torch.float64))
