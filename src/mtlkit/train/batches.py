"""From a batch to each task's loss: the device, the forward pass, the checked losses.

A batch is either joint, ``(inputs, targets)`` with a target for every task, or multi-input,
a :class:`~mtlkit.data.multi.TaskBatches` of ``task → (inputs, targets)`` (one dataset per
task). A multi-input batch whose tasks' inputs stack into one tensor is forwarded in one
pass; only its tasks get a loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.data.base import to_device
from mtlkit.data.multi import STEP_MODES, TaskBatches
from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.tasks import Task
from mtlkit.weighting import Weighting

Batch = tuple[Any, Mapping[str, Tensor]]
#: a forward pass: each task's output, each task's target, the shared representation (or None)
Forward = tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a device this machine does not have is a
    ConfigError naming it and the devices there are."""
    if str(device) != "auto":
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(
                f"field 'train.device': '{device}' is not a device; use auto, cpu, cuda, "
                f"cuda:N or mps (available here: {', '.join(available_devices())})"
            ) from None
        _check_available(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The devices torch can use on this machine."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


def _check_available(device: torch.device) -> None:
    if device.type == "cpu":
        return
    if device.type == "cuda":
        ok = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        why = (
            ""
            if torch.cuda.is_available()
            else (
                " (this torch has no CUDA support)"
                if torch.version.cuda is None
                else " (no GPU found)"
            )
        )
    elif device.type == "mps":
        ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        why = ""
    else:
        ok, why = True, ""  # other backends: torch reports on first use
    if not ok:
        raise ConfigError(
            f"field 'train.device': device '{device}' is not available{why}; "
            f"available here: {', '.join(available_devices())}"
        )


def check_step_mode(step_mode: str | None, method: Weighting) -> None:
    """A ConfigError when ``step_mode`` is unknown, or ``single`` with a method that
    combines several tasks' gradients per step (``needs_all_tasks``)."""
    if step_mode is None:
        return
    if step_mode not in STEP_MODES:
        raise ConfigError(f"step_mode must be one of {', '.join(STEP_MODES)}, got '{step_mode}'")
    if step_mode == "single" and getattr(method, "needs_all_tasks", False):
        raise ConfigError(
            f"weighting '{method}' is gradient-based: it combines the gradients of "
            "several tasks in one step, so it needs step_mode: mixed (one batch of every "
            "task per step); step_mode: single gives it one task per step"
        )


def forward(
    model: nn.Module, method: Weighting, inputs: Any
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Outputs, plus the shared representation when the method needs it or can use it."""
    wanted = method.needs_representation or (
        method.uses_representation and getattr(model, "has_representation", False)
    )
    if wanted:
        return model.forward_with_representation(inputs)
    return model(inputs), None


def forward_batch(
    model: nn.Module,
    method: Weighting,
    tasks: Mapping[str, Task],
    batch: Batch | TaskBatches,
    device: torch.device,
) -> Forward:
    """The forward pass of a training step on a joint or a multi-input batch."""
    if isinstance(batch, TaskBatches):
        return _forward_tasks(model, method, tasks, batch, device)
    inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
    outputs, representation = forward(model, method, inputs)
    return outputs, targets, representation


def _forward_tasks(
    model: nn.Module,
    method: Weighting,
    tasks: Mapping[str, Task],
    batch: TaskBatches,
    device: torch.device,
) -> Forward:
    """Outputs and targets of the tasks of a multi-input step, plus the shared
    representation when every task's inputs stack into one batch (one forward pass)."""
    unknown = sorted(set(batch) - set(tasks))
    if unknown:
        raise TaskDataError(
            f"the batch has data for unknown task(s) {', '.join(unknown)}; "
            f"the tasks are {', '.join(tasks)}"
        )
    names = list(batch)
    inputs = [to_device(batch[t][0], device) for t in names]
    targets = {t: to_device(batch[t][1][t], device) for t in names}
    if all(isinstance(x, Tensor) for x in inputs) and (
        len({(tuple(x.shape[1:]), x.dtype) for x in inputs}) == 1
    ):
        sizes = [x.shape[0] for x in inputs]
        out, rep = forward(model, method, torch.cat(inputs))
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        outputs = {t: out[t][a : a + n] for t, a, n in zip(names, starts, sizes, strict=True)}
        return outputs, targets, rep
    if method.needs_representation:
        raise ConfigError(
            f"weighting '{method}' needs one shared representation, but the tasks' "
            "inputs differ in shape and are forwarded separately; use jacobian: shared"
        )
    outputs = {}
    for t, x in zip(names, inputs, strict=True):
        outputs[t] = model(x)[t]
    return outputs, targets, None


def task_losses(
    tasks: Mapping[str, Task],
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    check: bool,
    *,
    every_task: bool = True,
) -> dict[str, Tensor]:
    """Each task's loss, after checking its target (``check``) against its output.

    ``every_task``: the batch is joint and must carry a target for every task; otherwise
    (multi-input) the tasks are those of ``targets``, in its order.
    """
    return checked_losses(tasks, outputs, targets, check, every_task=every_task)[0]


def checked_losses(
    tasks: Mapping[str, Task],
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    check: bool,
    *,
    every_task: bool = True,
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """:func:`task_losses`, and the number of labels of each task's target where the check
    found it on the way (every entry a valid label: its size; see :func:`labelled_losses`).

    The checks read back one small tensor for all the tasks, not one per task: each integer
    target's smallest and largest label (:meth:`~mtlkit.tasks.Task.label_bounds`). A target
    whose bounds do not show every entry a valid label (an ignore value, or a label out of
    range) gets the exact check, which names the task and the label.
    """
    names = _joint_names(tasks, outputs, targets) if every_task else list(targets)
    known: dict[str, int] = {}
    if check:
        for name in names:
            tasks[name].check(outputs[name], targets[name], labels=False)
        bounds = {name: tasks[name].label_bounds(targets[name]) for name in names}
        found = {name: b for name, b in bounds.items() if b is not None}
        flat = [bound.long() for pair in found.values() for bound in pair]
        values = torch.stack(flat).tolist() if flat else []
        for i, name in enumerate(found):
            if tasks[name].labels_plain(values[2 * i], values[2 * i + 1]):
                known[name] = targets[name].numel()
        for name in names:
            if name not in known:
                tasks[name].check_labels(targets[name])
    losses = {
        name: tasks[name].compute_loss(outputs[name], targets[name], False, labelled=name in known)
        for name in names
    }
    return losses, known


def _joint_names(
    tasks: Mapping[str, Task], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> list[str]:
    """Every task's name, after checking a joint batch has its target and the model its
    output."""
    if not isinstance(targets, Mapping):
        raise TaskDataError(
            f"a batch's targets must be a dict task → tensor, got {type(targets).__name__}"
        )
    unknown = sorted(set(targets) - set(tasks))
    if unknown:
        raise TaskDataError(
            f"the batch has targets for unknown task(s) {', '.join(unknown)}; "
            f"the tasks are {', '.join(tasks)}"
        )
    for name in tasks:
        if name not in targets:
            raise TaskDataError(
                f"task '{name}': the batch has no target for it "
                f"(targets present: {', '.join(targets) or 'none'})"
            )
        if name not in outputs:
            raise TaskDataError(f"task '{name}': the model produced no output for it")
    return list(tasks)


def labelled_losses(
    tasks: Mapping[str, Task],
    losses: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    known: Mapping[str, int] | None = None,
) -> tuple[dict[str, Tensor | None], dict[str, int]]:
    """Every task's loss, None for a task absent from the batch or whose target has no label
    (:meth:`~mtlkit.tasks.Task.label_mask`); and the number of labels of each task's target,
    which its (masked mean) loss averages over (``known``: counts already found, by
    :func:`checked_losses`)."""
    known = known or {}
    names = [t for t in losses if t not in known]
    sums = [tasks[t].label_mask(targets[t]).sum() for t in names]
    # one read-back for every task (a device sync each otherwise)
    counted = dict(zip(names, torch.stack(sums).tolist() if sums else [], strict=True))
    counts = {t: known[t] if t in known else counted[t] for t in losses}
    present = {t: loss for t, loss in losses.items() if counts[t] > 0}
    if len(present) == len(tasks):
        return dict(present), counts
    return {t: present.get(t) for t in tasks}, counts
