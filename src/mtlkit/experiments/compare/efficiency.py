"""What each side of a comparison costs: parameters, training time, inference latency,
throughput and peak memory of the one multi-task model against the T single-task models.

Latency is measured on one test batch, the same for every model: a few warm-up passes, then
several timed repeats, and the median (robust to a loaded machine). The T single-task models
are served one after the other, so their latency is that of all T forward passes. Peak memory
is ``torch.cuda.max_memory_allocated`` during one pass with the model(s) resident, on CUDA
only: on the CPU no per-run measure is honest (the process's resident size mixes the data,
the other models and the allocator's cache), so it is None.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlkit.data.base import to_device
from mtlkit.errors import MtlkitError

__all__ = ["REPEATS", "WARMUP", "first_batch_per_task", "load_models", "measure_inference"]

#: untimed passes before timing, and timed repeats (their median is reported)
WARMUP, REPEATS = 2, 7


def first_batch_per_task(loader: Iterable[Any], tasks: Sequence[str]) -> dict[str, Any]:
    """Multi-input data (batches ``task → (inputs, targets)``): the inputs of the first batch
    of each of ``tasks``, read until every task has one."""
    found: dict[str, Any] = {}
    for batch in loader:
        for task, (inputs, _) in batch.items():
            if task in tasks and task not in found:
                found[task] = inputs
        if len(found) == len(tasks):
            break
    missing = [t for t in tasks if t not in found]
    if missing:
        raise MtlkitError(f"the test split has no batch of task(s) {', '.join(missing)}")
    return found


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Median seconds of ``fn`` over :data:`REPEATS` runs after :data:`WARMUP` runs."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(WARMUP):
        fn()
    sync()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_inference(
    models: Mapping[str, nn.Module],
    inputs: Any,
    device: torch.device,
    multi_input: bool = False,
) -> dict[str, Any]:
    """Latency (ms, median), throughput (examples/s) and peak memory (MB; None off CUDA) of
    serving one batch through every model of ``models`` in turn.

    ``models`` maps a task (or "all") to a model; with ``multi_input`` the inputs are
    ``task → inputs`` and each model gets its task's inputs (a model under "all" gets every
    task's in turn).
    """
    placed = {k: m.to(device).eval() for k, m in models.items()}
    batch = to_device(inputs, device)
    if multi_input:
        work = [(m, batch[t]) for k, m in placed.items() for t in (batch if k == "all" else [k])]
        examples = sum(_count(batch[t]) for t in batch)
    else:
        work = [(m, batch) for m in placed.values()]
        examples = _count(batch)

    @torch.no_grad()
    def serve() -> None:
        for model, x in work:
            model(x)

    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        serve()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    seconds = _timed(serve, device)
    return {
        "latency_ms": 1000.0 * seconds,
        "throughput": examples / seconds if seconds > 0 else None,
        "batch_examples": examples,
        "peak_memory_mb": peak,
    }


def _count(inputs: Any) -> int:
    from mtlkit.train.callbacks import batch_size

    return batch_size((inputs,))


def load_models(run_dirs: Mapping[str, Path]) -> dict[str, nn.Module]:
    """The selected model of each run folder (``key → folder``), on the CPU in eval mode."""
    from mtlkit.experiments.inference import load_run

    return {k: load_run(folder).model for k, folder in run_dirs.items()}
