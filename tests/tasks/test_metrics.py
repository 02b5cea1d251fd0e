"""Metrics and Δm on hand-computed cases."""

import math

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.tasks import METRICS, delta_m, delta_m_per_task, get_metric, half_width, interval


def test_directions() -> None:
    assert get_metric("accuracy").direction == "max"
    assert get_metric("macro_f1").direction == "max"
    assert get_metric("auroc").direction == "max"
    assert get_metric("r2").direction == "max"
    assert get_metric("mae").direction == "min"
    assert get_metric("rmse").direction == "min"
    assert {"accuracy", "macro_f1", "auroc", "mae", "rmse", "r2"} <= set(METRICS.names())


def test_accuracy_and_macro_f1_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    target = torch.tensor([0, 1, 2, 2])  # predictions 0, 1, 1, 2
    assert get_metric("accuracy")(logits, target) == pytest.approx(0.75)
    # class 0: F1 1; class 1: tp1 fp1 fn0 → 2/3; class 2: tp1 fp0 fn1 → 2/3
    assert get_metric("macro_f1")(logits, target) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_accuracy_ignores_missing_labels_and_binary_logits() -> None:
    logits = torch.tensor([1.0, -1.0, 2.0, -3.0])
    target = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert get_metric("accuracy")(logits, target) == pytest.approx(0.75)
    multi = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    assert get_metric("accuracy")(multi, torch.tensor([0, -100, 0])) == pytest.approx(0.5)


def test_auroc_binary_by_hand() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    # positives (0.35, 0.8) vs negatives (0.1, 0.4): 3 of 4 pairs ordered → 0.75
    assert get_metric("auroc")(torch.logit(scores), target) == pytest.approx(0.75)


def test_auroc_ties_count_one_half_and_missing_labels_are_ignored() -> None:
    scores = torch.tensor([0.2, 0.5, 0.5, 0.9, 0.7])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0, -100.0])
    # positives (0.5, 0.9) vs negatives (0.2, 0.5): 0.5 > 0.2, 0.5 = 0.5 (½), 0.9 > both → 3.5/4
    assert get_metric("auroc")(torch.logit(scores), target) == pytest.approx(3.5 / 4)
    assert math.isnan(get_metric("auroc")(torch.zeros(3), torch.ones(3)))  # one class only


def test_auroc_multiclass_is_the_one_vs_rest_macro_mean() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.4, 0.4, 0.2]])
    target = torch.tensor([0, 1, 2, 1])
    # class 0 (0.7 vs 0.2, 0.3, 0.4): 1; class 1 (0.5, 0.4 vs 0.2, 0.3): 1;
    # class 2 (0.4 vs 0.1, 0.3, 0.2): 1 → 1. Swap sample 3's class-1 score down to 0.25:
    assert get_metric("auroc")(probs.log(), target) == pytest.approx(1.0)
    probs[3] = torch.tensor([0.45, 0.25, 0.3])
    # class 0: 0.7 vs (0.2, 0.3, 0.45) → 1; class 1: (0.5, 0.25) vs (0.2, 0.3): 3/4;
    # class 2: 0.4 vs (0.1, 0.3, 0.3) → 1
    assert get_metric("auroc")(probs.log(), target) == pytest.approx((1 + 0.75 + 1) / 3)


def test_regression_metrics_by_hand() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([1.0, 3.0, 3.0, 2.0])  # errors 0, -1, 0, 2
    assert get_metric("mae")(pred, target) == pytest.approx(0.75)
    assert get_metric("rmse")(pred, target) == pytest.approx(math.sqrt(5 / 4))
    # SS_res = 5, mean 2.25, SS_tot = 1.5625 + 0.5625 + 0.5625 + 0.0625 = 2.75
    assert get_metric("r2")(pred, target) == pytest.approx(1 - 5 / 2.75)
    nan_target = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    assert get_metric("mae")(pred, nan_target) == pytest.approx(2 / 3)


def test_delta_m_by_hand() -> None:
    baseline = {"a": {"accuracy": 0.80}, "b": {"mae": 2.0, "r2": 0.5}}
    mtl = {"a": {"accuracy": 0.88}, "b": {"mae": 1.5, "r2": 0.45}}
    # +10 % (acc up), +25 % (mae down is better), −10 % (r2 down) → mean 25/3 %
    assert delta_m(mtl, baseline) == pytest.approx(25 / 3)
    per_task = delta_m_per_task(mtl, baseline)
    assert per_task["a"] == pytest.approx(10.0)
    assert per_task["b"] == pytest.approx(7.5)
    assert delta_m(baseline, baseline) == 0.0


def test_delta_m_sign_follows_direction() -> None:
    worse = delta_m({"t": {"rmse": 1.1}}, {"t": {"rmse": 1.0}})
    assert worse == pytest.approx(-10.0)


def test_delta_m_errors_name_task_and_metric() -> None:
    with pytest.raises(ConfigError, match="task 'b'"):
        delta_m({"a": {"accuracy": 1.0}}, {"a": {"accuracy": 1.0}, "b": {"accuracy": 1.0}})
    with pytest.raises(ConfigError, match="metric 'mae'"):
        delta_m({"a": {"accuracy": 1.0}}, {"a": {"mae": 1.0}})
    with pytest.raises(ConfigError, match="non-zero baseline"):
        delta_m({"a": {"mae": 1.0}}, {"a": {"mae": 0.0}})


def test_interval_by_hand_and_none_for_one_value() -> None:
    r = interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.302653
    assert r["mean"] == pytest.approx(2.0) and r["std"] == pytest.approx(1.0)
    assert r["ci"] == pytest.approx([2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5], rel=1e-6)
    assert interval([4.0]) == {"mean": 4.0, "std": None, "ci": None, "n": 1}  # never "± 0"
    assert half_width(1.0, 1) == 0.0 and half_width(None, 5) == 0.0


def test_class_dimension_last_for_per_token_outputs() -> None:
    # (B=1, L=3, C=4) per-token logits; argmax over the last dimension → 2, 0, 3
    out = torch.tensor([[[0.0, 0, 5, 0], [5, 0, 0, 0], [0, 0, 0, 5]]])
    target = torch.tensor([[2, 0, 1]])
    assert get_metric("accuracy")(out, target) == pytest.approx(2 / 3)
    # the same logits channel-first (B, C, L) give the same answer
    assert get_metric("accuracy")(out.transpose(1, 2), target) == pytest.approx(2 / 3)
    assert get_metric("macro_f1")(out, target) == get_metric("macro_f1")(
        out.transpose(1, 2), target
    )
    with pytest.raises(Exception, match="no class dimension"):
        get_metric("accuracy")(torch.zeros(1, 5, 7), target)


def test_standardized_mse_ignores_missing_labels() -> None:
    """A NaN target is a missing label for the standardised loss too (tabular regression
    columns with empty cells use it): the loss is the MSE of the labelled entries over std²,
    and a batch without labels is an exact zero that still back-propagates."""
    from mtlkit.tasks import StandardizedMSE

    loss = StandardizedMSE(std=2.0)
    output = torch.tensor([[1.0], [3.0], [5.0]], requires_grad=True)
    target = torch.tensor([2.0, float("nan"), 1.0])
    value = loss(output, target)
    assert float(value.detach()) == pytest.approx(((1 - 2) ** 2 + (5 - 1) ** 2) / 2 / 4)
    value.backward()
    assert output.grad is not None and float(output.grad[1, 0]) == 0.0
    empty = loss(output, torch.full((3,), float("nan")))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
