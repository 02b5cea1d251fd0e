"""The schema of a run, validated by pydantic: YAML in, typed config out.

Every error names the field at fault (``field 'train.epochs': ...``); component names are
checked against their registries when the run is built (:mod:`mtlkit.experiments.run`), and an
unknown name lists the available ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.constructor import ConstructorError

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.files import read_text


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes for configs: a key written twice in a mapping is
    an error (not silently the last), and numbers such as ``1e-4`` are floats (YAML 1.2), not
    strings."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:  # the keys written here (merged ones may repeat)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first_line:
                        raise ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"found key '{key}' twice (first on line {first_line[key]})",
                            key_node.start_mark,
                        )
                    first_line[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


def parse_override(item: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: the dotted key and the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got '{item}'")
    try:
        return key, load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {key}: cannot parse the value '{raw}' ({problem})") from None


class Strict(BaseModel):
    """A config section that rejects unknown fields."""

    model_config = ConfigDict(extra="forbid")


class Component(Strict):
    """A registered component and its options."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Component):
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)


class TaskConfig(Strict):
    """Selects one of the dataset's tasks and overrides some of its fields."""

    name: str
    weight: float | None = Field(None, ge=0)
    metrics: list[str] | None = None
    loss: str | None = None
    auxiliary: bool | None = None
    head: str | None = None
    head_params: dict[str, Any] | None = None
    #: the metric Δm compares for this task (one of its metrics); None: the task kind's
    #: primary metric (docs/protocol.md)
    primary_metric: str | None = None


class ModelConfig(Strict):
    architecture: str = "hps"
    params: dict[str, Any] = Field(default_factory=dict)
    encoder: Component | None = None


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    monitor: str = "loss"
    patience: int | None = Field(None, ge=1)
    amp: bool | Literal["bf16", "fp16"] = False
    device: str = "auto"
    deterministic: bool = True
    log_every: int = Field(10, ge=1)
    #: besides metrics.jsonl: tensorboard (when installed), wandb, mlflow (extras)
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"]
    )
    check_inputs: bool = True
    #: multi-input data (one dataset per task) only: one task's batch per step ("single",
    #: drawn by ``sampler``) or every task's each step ("mixed", which gradient methods need);
    #: None keeps the dataset's own setting
    step_mode: Literal["single", "mixed"] | None = None
    sampler: Component | None = None
    steps_per_epoch: int | None = Field(None, ge=1)
    #: many tasks: the method runs on this many tasks drawn at random each step, their losses
    #: scaled by T/k (mtlkit.weighting.subsample: what is unbiased); None: every task
    tasks_per_step: int | None = Field(None, ge=1)
    #: under torchrun: "ddp" replicates the model on every rank; "fsdp" shards the shared
    #: encoder (FSDP2), heads replicated; "fsdp_sharded_heads" shards the heads too
    #: (docs/distributed.md). One process ignores it.
    strategy: Literal["ddp", "fsdp", "fsdp_sharded_heads"] = "ddp"


class RunConfig(Strict):
    """A whole run: data, tasks, model, loss balancing, optimisation."""

    #: names the run folder (``runs/<name>-<time>``): letters, digits, '.', '_', '-'
    name: str = Field("run", min_length=1, max_length=100)
    seed: int = Field(0, ge=0, lt=2**63)
    #: modules or .py files to import first, so the components they register can be named
    imports: list[str] = Field(default_factory=list)
    data: DataConfig
    tasks: list[TaskConfig] | None = None
    weights: dict[str, float] | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    weighting: Component = Field(default_factory=lambda: Component(name="ew"))
    aggregator: Component | None = None
    optimizer: Component = Field(
        default_factory=lambda: Component(name="adam", params={"lr": 1e-3})
    )
    scheduler: Component = Field(default_factory=lambda: Component(name="none"))
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(
                f"'{name}' is not a usable run name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (a name never chooses the folder's parent)"
            )
        return name

    @model_validator(mode="after")
    def _names_unique(self) -> RunConfig:
        if self.tasks is not None:
            names = [t.name for t in self.tasks]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"task(s) {', '.join(dupes)} listed twice")
        for task, value in (self.weights or {}).items():
            if not value >= 0:
                raise ValueError(f"weight of task '{task}' must be ≥ 0, got {value}")
        return self


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field '{where}': {e['msg']}")
    return "invalid config: " + "; ".join(lines)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a config mapping; a ConfigError names each field at fault."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML config file, with optional dotted-key overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = load_yaml(read_text(path, "config file")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except MtlkitError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_config(data)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.epochs", 3)`` sets ``d["train"]["epochs"] = 3``."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        if node.get(part) is None:  # absent, or an empty section in the file
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[last] = value


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
