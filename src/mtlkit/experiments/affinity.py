"""``mtlkit affinity``: measure task affinity during a short run of a config's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlkit.analysis.affinity import Affinity, measure_affinity
from mtlkit.experiments.run import build_run
from mtlkit.train.batches import resolve_device
from mtlkit.train.optim import build_optimizer
from mtlkit.train.seed import seed_everything


def run_affinity(
    config: Any,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    every: int = 5,
    lr: float | None = None,
    min_measured: int = 30,
    max_measured: int = 200,
    rel_stderr: float = 0.25,
) -> Affinity:
    """Measure the affinity of a config's tasks during a short run of its model, until the
    estimate is precise (the rule of :func:`~mtlkit.analysis.affinity.measure_affinity`:
    at least ``min_measured`` measured steps, then until every standard error is at most
    ``rel_stderr`` × the typical score, at most ``max_measured``; ``epochs``/``steps`` cap the
    run); write ``affinity.json`` and the heatmaps into ``out_dir``."""
    run = build_run(config)
    seed_everything(run.config.seed, run.config.train.deterministic)
    cfg = run.config
    groups: list[dict[str, Any]] = [{"params": [p for p in run.model.parameters()]}]
    if run.weighting.parameters():
        groups.append({"params": run.weighting.parameters()})
    optimizer = build_optimizer(cfg.optimizer.name, groups, **dict(cfg.optimizer.params))
    affinity = measure_affinity(
        run.model,
        run.tasks,
        run.weighting,
        run.loader("train", train=True),
        optimizer=optimizer,
        steps=steps,
        epochs=epochs,
        every=every,
        lr=lr,
        min_measured=min_measured,
        max_measured=max_measured,
        rel_stderr=rel_stderr,
        device=resolve_device(cfg.train.device),
    )
    affinity.save(out_dir)
    return affinity
