"""The primary metric of a task (declared by its kind, chosen in the config) and Δm restricted
to it."""

from __future__ import annotations

import pytest

from mtlkit.config import parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.run import build_run
from mtlkit.tasks import TASK_KINDS, Task, delta_m, delta_m_per_task

from ..conftest import small_digits_config


@pytest.mark.parametrize("kind", sorted(TASK_KINDS.names()))
def test_every_kind_declares_a_primary_metric_among_its_defaults(kind: str) -> None:
    spec = TASK_KINDS.lookup(kind)
    assert spec.primary in spec.metrics


def test_primary_metric_comes_from_the_kind_unless_the_task_chooses() -> None:
    assert Task("c", "classification", 3).primary_metric == "accuracy"
    assert Task("b", "binary").primary_metric == "auroc"  # declared by the binary kind
    assert Task("r", "regression").primary_metric == "mae"
    assert Task("b", "binary", metrics=["accuracy"]).primary_metric == "accuracy"
    assert Task("c", "classification", 3, primary="macro_f1").primary_metric == "macro_f1"
    with pytest.raises(ConfigError, match=r"task 'c': field 'primary_metric' is 'mae'"):
        Task("c", "classification", 3, primary="mae")


def test_the_config_chooses_a_primary_metric_and_errors_name_task_and_field() -> None:
    raw = small_digits_config()
    raw["tasks"] = [{"name": "left", "primary_metric": "macro_f1"}, {"name": "right"}]
    tasks = {t.name: t for t in build_run(parse_config(raw)).tasks}
    assert tasks["left"].primary_metric == "macro_f1"
    assert tasks["right"].primary_metric == "accuracy"
    raw["tasks"][0]["primary_metric"] = "mae"
    with pytest.raises(ConfigError, match=r"task 'left': field 'primary_metric' is 'mae'"):
        build_run(parse_config(raw))
    # metrics chosen in the config without the dataset's primary: the first chosen one
    raw["tasks"] = [{"name": "left", "metrics": ["macro_f1"]}, {"name": "right"}]
    left = {t.name: t for t in build_run(parse_config(raw)).tasks}["left"]
    assert left.primary_metric == "macro_f1"


def test_delta_m_restricted_to_chosen_metrics() -> None:
    mtl = {"a": {"accuracy": 0.55, "macro_f1": 0.4}, "b": {"mae": 0.9, "rmse": 1.5}}
    stl = {"a": {"accuracy": 0.5, "macro_f1": 0.5}, "b": {"mae": 1.0, "rmse": 1.0}}
    # all metrics: (+10 − 20 + 10 − 50) / 4
    assert delta_m(mtl, stl) == pytest.approx(-12.5)
    primary = {"a": "accuracy", "b": "mae"}
    assert delta_m(mtl, stl, metrics=primary) == pytest.approx(10.0)
    assert delta_m(mtl, stl, metrics={"a": ["accuracy", "macro_f1"], "b": "rmse"}) == (
        pytest.approx((10 - 20 - 50) / 3)
    )
    assert delta_m_per_task(mtl, stl, metrics=primary) == pytest.approx({"a": 10.0, "b": 10.0})
    # the restricted Δm equals the plain Δm of the restricted tables
    cut = {t: {primary[t]: v[primary[t]]} for t, v in stl.items()}
    assert delta_m(mtl, stl, metrics=primary) == pytest.approx(delta_m(mtl, cut))
    with pytest.raises(ConfigError, match=r"task 'b': metric\(s\) r2 chosen"):
        delta_m(mtl, stl, metrics={"a": "accuracy", "b": "r2"})
    with pytest.raises(ConfigError, match="task 'b' has no chosen metric"):
        delta_m(mtl, stl, metrics={"a": "accuracy"})
