"""Your own data from a config: the ``python`` dataset, built by a function of yours.

```yaml
data:
  name: python
  params:
    factory: my_data.py:make_splits   # or my_package.data:make_splits
    params: {root: /data/scans}       # keyword arguments of the factory
    tasks:                            # the tasks, unless the factory returns them
      label: {kind: classification, num_outputs: 10}
    num_workers: 2                    # DataLoader worker processes
```

The factory returns either a :class:`~mtlkit.data.DataBundle`, or a mapping with the splits
``train``, ``val`` and ``test`` — each a map-style ``torch.utils.data.Dataset`` whose examples
are ``(inputs, {task: target})``, or a :class:`~mtlkit.data.TensorSplit` — and optionally
``tasks`` (a list of :class:`~mtlkit.tasks.Task`) and ``encoder`` (``(name, options)``).
Datasets are read example by example through a ``DataLoader`` with ``num_workers`` workers, so
they may read from disk and never be held in memory. Without an encoder, 1-D inputs get an
``mlp`` and ``(C, H, W)`` images a ``cnn``; other inputs need ``encoder`` (or the config's
``model.encoder``).

The boundary is checked as for built-in data: every split exists and is non-empty; the first
example of each split is ``(inputs, targets)`` with a target for every task (and no unknown
task); targets have the task's dtype (integers for class labels) and labels lie in range.
Errors name the factory, the split and the task.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.data.base import DATASETS, DataBundle, DatasetSplit, TensorSplit
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.plugins import import_plugins
from mtlkit.tasks import IGNORE_INDEX, Task

SPLITS = ("train", "val", "test")


def load_factory(spec: str) -> Any:
    """The function ``module:function`` or ``file.py:function`` names."""
    where = f"dataset 'python': option 'factory' {spec!r}"
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where} must be 'module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        if not Path(module_name).is_file():
            raise ConfigError(f"{where}: file {module_name} does not exist")
        module = import_plugins([module_name])[0]
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise ConfigError(f"{where}: no module named '{err.name}'") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {module_name} has no function '{attr}'")
    return fn


def _tasks(spec: Mapping[str, Any] | None, given: Any, where: str) -> list[Task]:
    if given is not None:
        tasks = list(given)
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise DatasetError(f"{where}: 'tasks' must be a non-empty list of mtlkit.Task")
        return tasks
    if not spec:
        raise DatasetError(
            f"{where}: no tasks: return 'tasks' from the factory or give option 'tasks' "
            "(task name → {kind, num_outputs, ...})"
        )
    out = []
    for name, fields in spec.items():
        fields = {"kind": fields} if isinstance(fields, str) else dict(fields or {})
        if "kind" not in fields:
            raise DatasetError(f"{where}: task '{name}' needs a 'kind'")
        out.append(Task(name, **fields))
    return out


def _check_example(split: str, example: Any, tasks: list[Task], where: str) -> Any:
    """Check the first example of a split; returns its inputs."""
    if not isinstance(example, tuple | list) or len(example) != 2:
        raise DatasetError(
            f"{where}: {split} split: an example must be (inputs, {{task: target}}), "
            f"got a {type(example).__name__}"
        )
    inputs, targets = example
    if not isinstance(targets, Mapping):
        raise DatasetError(
            f"{where}: {split} split: targets must be a dict task → target, "
            f"got a {type(targets).__name__}"
        )
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in targets]
    unknown = [n for n in targets if n not in names]
    if missing or unknown:
        raise DatasetError(
            f"{where}: {split} split: "
            + (f"no target for task(s) {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"target(s) for unknown task(s) {', '.join(map(str, unknown))}" if unknown else "")
            + f" (the tasks: {', '.join(names)})"
        )
    for task in tasks:
        target = torch.as_tensor(targets[task.name])
        if task.spec.integer_targets:
            if target.is_floating_point() or target.dtype == torch.bool:
                raise DatasetError(
                    f"{where}: {split} split: task '{task.name}' ({task.kind}) needs integer "
                    f"class labels, got dtype {target.dtype}"
                )
            labels = target[target != IGNORE_INDEX]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= task.num_outputs):
                raise DatasetError(
                    f"{where}: {split} split: task '{task.name}': label {int(labels.max())} "
                    f"out of range [0, {task.num_outputs})"
                )
        elif not target.is_floating_point():
            raise DatasetError(
                f"{where}: {split} split: task '{task.name}' ({task.kind}) needs float "
                f"targets, got dtype {target.dtype}"
            )
    leaves = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    if not all(isinstance(x, Tensor) for x in leaves):
        raise DatasetError(f"{where}: {split} split: inputs must be a tensor or a dict of tensors")
    return inputs


def _default_encoder(inputs: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(inputs, Tensor) and inputs.dim() == 1:
        return "mlp", {"in_features": int(inputs.shape[0])}
    if isinstance(inputs, Tensor) and inputs.dim() == 3:
        return "cnn", {"in_channels": int(inputs.shape[0])}
    shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else "a dict"
    raise DatasetError(
        f"{where}: no default encoder for inputs of shape {shape}: return 'encoder' from the "
        "factory or give option 'encoder' (name and options)"
    )


@DATASETS.register("python")
def python_dataset(
    factory: str,
    params: Mapping[str, Any] | None = None,
    tasks: Mapping[str, Any] | None = None,
    encoder: Mapping[str, Any] | None = None,
    num_workers: int = 0,
) -> DataBundle:
    """The data a user's ``factory`` returns (module docstring)."""
    where = f"dataset 'python' ({factory})"
    fn = load_factory(factory)
    try:
        made = fn(**dict(params or {}))
    except TypeError as err:
        raise ConfigError(
            f"{where}: calling the factory with {dict(params or {})}: {err}"
        ) from None
    if isinstance(made, DataBundle):
        return made
    if not isinstance(made, Mapping):
        raise DatasetError(
            f"{where}: the factory must return a DataBundle or a dict with train, val and test, "
            f"got a {type(made).__name__}"
        )
    missing = [s for s in SPLITS if s not in made]
    if missing:
        raise DatasetError(f"{where}: the factory returned no {', '.join(missing)} split")
    task_list = _tasks(tasks, made.get("tasks"), where)
    splits: dict[str, TensorSplit | DatasetSplit] = {}
    first_inputs = None
    for name in SPLITS:
        data = made[name]
        if isinstance(data, TensorSplit):
            splits[name] = data
            example = None
            if len(data):
                x, y = data[0:1]
                x = {k: v[0] for k, v in x.items()} if isinstance(x, Mapping) else x[0]
                example = (x, {t: v[0] for t, v in y.items()})
        else:
            if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
                raise DatasetError(
                    f"{where}: the {name} split must be a map-style torch Dataset (with "
                    f"__getitem__ and __len__), got a {type(data).__name__}"
                )
            splits[name] = DatasetSplit(data, name, num_workers=num_workers)
            example = data[0] if len(data) else None
        if example is None:
            raise DatasetError(f"{where}: the {name} split is empty")
        inputs = _check_example(name, example, task_list, where)
        first_inputs = inputs if first_inputs is None else first_inputs
    if encoder is not None:
        enc = (str(encoder["name"]), dict(encoder.get("params", {})))
    elif made.get("encoder") is not None:
        name, options = made["encoder"]
        enc = (str(name), dict(options))
    else:
        enc = _default_encoder(first_inputs, where)
    return DataBundle(
        str(made.get("name", factory)),
        splits["train"],
        splits["val"],
        splits["test"],
        task_list,
        enc,
    )


__all__ = ["load_factory", "python_dataset"]
