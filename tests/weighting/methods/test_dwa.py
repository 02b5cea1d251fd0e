"""DWA (dynamic weight average): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.errors import TaskDataError
from mtlkit.weighting import DWA


def test_dwa_weights_from_hand_computed_history() -> None:
    dwa = DWA()  # temperature 2
    losses = torch.ones(2)
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2))
    dwa.on_epoch_end(0, {"a": 2.0, "b": 4.0})
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2))  # still only one epoch
    dwa.on_epoch_end(1, {"a": 1.0, "b": 3.2})
    # r = (0.5, 0.8); w = 2 e^{r/2} / Σ e^{r/2}
    ea, eb = math.exp(0.25), math.exp(0.4)
    expected = torch.tensor([2 * ea / (ea + eb), 2 * eb / (ea + eb)])
    torch.testing.assert_close(dwa.weights(losses), expected)
    assert dwa.weights(losses).sum().item() == pytest.approx(2.0)
    dwa.on_epoch_end(2, {"b": 1.6, "a": 0.1})  # only the last two epochs count: r = (0.1, 0.5)
    ea, eb = math.exp(0.05), math.exp(0.25)
    torch.testing.assert_close(
        dwa.weights(losses), torch.tensor([2 * ea / (ea + eb), 2 * eb / (ea + eb)])
    )


def test_dwa_temperature_limits() -> None:
    history = [{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.9}]  # b falls slowest
    hot, cold = DWA(temperature=1e6), DWA(temperature=1e-3)
    for epoch, means in enumerate(history):
        hot.on_epoch_end(epoch, means)
        cold.on_epoch_end(epoch, means)
    torch.testing.assert_close(hot.weights(torch.ones(2)), torch.ones(2))
    torch.testing.assert_close(cold.weights(torch.ones(2)), torch.tensor([0.0, 2.0]))


def test_dwa_rejects_bad_epoch_losses() -> None:
    dwa = DWA()
    dwa.on_epoch_end(0, {"a": 1.0, "b": 1.0})
    with pytest.raises(TaskDataError, match="task 'b'"):
        dwa.on_epoch_end(1, {"a": 1.0, "b": math.nan})
    with pytest.raises(TaskDataError, match="missing task"):
        dwa.on_epoch_end(1, {"a": 1.0})
