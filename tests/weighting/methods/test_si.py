"""SI (scale-invariant loss): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import SI
from tests.weighting._loss_toy import TASKS, Toy, shared_grad_of


def test_si_update_is_invariant_to_loss_scaling() -> None:
    base, _ = shared_grad_of("si", lambda m: m.losses())
    scaled, _ = shared_grad_of(
        "si", lambda m: {t: c * m.loss(t) for t, c in zip(TASKS, (1e-3, 7.0, 250.0), strict=True)}
    )
    torch.testing.assert_close(scaled, base, rtol=1e-10, atol=1e-12)
    ew, _ = shared_grad_of(
        "ew", lambda m: {t: c * m.loss(t) for t, c in zip(TASKS, (1, 7, 9), strict=True)}
    )
    assert not torch.allclose(ew, base * 3)  # EW is not scale invariant: the test can tell


def test_si_weights_are_inverse_losses() -> None:
    model = Toy()
    record = SI().backward(model.losses(), model)
    for t in TASKS:
        assert record.weights[t] == pytest.approx(1 / model.loss(t).item())
