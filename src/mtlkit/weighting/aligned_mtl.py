"""Aligned-MTL: aligning the principal components of the task gradients.

Senushkin, Patakin, Kuznetsov, Konushin (2023). "Independent Component Alignment for Multi-Task
Learning". CVPR 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


def balance_transformation(gram: Tensor, /) -> Tensor:
    """The T × T matrix B that aligns the task gradients: the rows of B J are orthogonal and of
    equal norm σ_min on the range of J, i.e. (B J)(B J)ᵀ = σ_min² V Vᵀ.

    With G = J Jᵀ = V Λ Vᵀ (eigenvalues above the rank tolerance only)::

        B = σ_min · V Λ^{-1/2} Vᵀ,   σ_min = √λ_min

    Eigenvalues below ``λ_max · T · eps`` (eps of ``gram``'s dtype) count as zero: this is the
    paper's rank-aware, stable variant, which aligns within the span of the gradients and
    leaves the null directions alone. An all-zero G gives B = 0. Computed in float64.
    """
    t = gram.shape[0]
    eigvals, eigvecs = torch.linalg.eigh(gram.detach().double())
    tol = eigvals.max().clamp_min(0.0) * t * torch.finfo(gram.dtype).eps
    kept = eigvals > tol
    if not bool(kept.any()):
        return torch.zeros(t, t, dtype=torch.float64, device=gram.device)
    eigvals, eigvecs = eigvals[kept], eigvecs[:, kept]
    sigma_min = eigvals.min().sqrt()
    balance: Tensor = sigma_min * (eigvecs / eigvals.sqrt()) @ eigvecs.T
    return balance


@WEIGHTINGS.register("aligned_mtl")
class AlignedMTL(GramianWeighting):
    """Make the task gradients an orthogonal, equal-norm system, then sum them.

    The paper's algorithm, in this library's T × P orientation::

        G = J Jᵀ = V Λ Vᵀ                                   (eigen-decomposition, T × T)
        keep the eigenvalues above the rank tolerance (stable, rank-aware)
        B = √λ_min · V Λ^{-1/2} Vᵀ                         (balance transformation)
        Ĵ = B J                                             (aligned task gradients)
        update = Ĵᵀ w = Jᵀ (B w),   w = 1 (equal task weights)

    The aligned Gram matrix Ĵ Ĵᵀ = λ_min V Vᵀ is a multiple of the identity on the range of
    G: the principal components of the update have equal strength, so no component (task)
    dominates. Only G is needed; ``jacobian="representation"`` is the paper's cheaper
    Aligned-MTL-UB variant (gradients at the shared representation).

    Scale: w = 1, a sum, like EW. T identical gradients g give G of rank 1, B = 11ᵀ/T, task
    weights B·1 = 1 and the update T·g. For a full-rank G the update norm is set by the
    smallest singular value σ_min, as in the paper.
    """

    name = "aligned_mtl"

    def __init__(self, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        return balance_transformation(gram).sum(dim=1)
