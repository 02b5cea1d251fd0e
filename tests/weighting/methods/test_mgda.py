"""MGDA: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting import MGDA
from tests.weighting.samplers import HARD, HARD_CASES


@pytest.mark.parametrize("jac", HARD)
def test_mgda_kkt_of_the_min_norm_problem(jac: Tensor) -> None:
    t = jac.shape[0]
    method = MGDA()
    alpha = method.weights_from_gram(jac @ jac.T) / t  # back on the simplex
    gram = jac @ jac.T
    assert float(alpha.min()) >= 0 and abs(float(alpha.sum()) - 1) < 1e-12
    grad, level = gram @ alpha, alpha @ gram @ alpha
    tol = 1e-9 * float(gram.diagonal().max())
    assert bool((grad >= level - tol).all())
    support = alpha > 1e-9
    assert torch.allclose(grad[support], level.expand(int(support.sum())), atol=tol, rtol=0)


def test_mgda_update_is_the_min_norm_point() -> None:
    jac = HARD_CASES["random"](4, 3, seed=5)
    update = MGDA().aggregate(jac) / 4
    samples = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((500,))
    assert float(update.norm()) <= float((samples @ jac).norm(dim=1).min()) + 1e-12


def test_mgda_l2_weights_ignore_gradient_scales() -> None:
    jac = HARD_CASES["random"](4, 10, seed=2)
    scales = torch.tensor([[1e-3], [1.0], [7.0], [1e4]], dtype=torch.float64)
    method = MGDA(normalization="l2")
    a = method.weights_from_gram(jac @ jac.T)
    b = method.weights_from_gram((scales * jac) @ (scales * jac).T)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_mgda_loss_normalisations() -> None:
    jac = HARD_CASES["random"](3, 8, seed=4)
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    norms = jac.norm(dim=1)
    for normalization, divisor in (("loss", losses), ("loss+", losses * norms)):
        got = MGDA(normalization=normalization).aggregate(jac, losses=losses)
        scaled = jac / divisor[:, None]
        alpha = MGDA().weights_from_gram(scaled @ scaled.T)
        torch.testing.assert_close(got, alpha @ jac)  # weights of ĝ applied to the raw g
    with pytest.raises(ConfigError, match="normalization 'loss' needs the task losses"):
        MGDA(normalization="loss").aggregate(jac)
    with pytest.raises(TaskDataError, match="positive finite losses"):
        MGDA(normalization="loss").aggregate(jac, losses=torch.tensor([1.0, 0.0, 2.0]))
