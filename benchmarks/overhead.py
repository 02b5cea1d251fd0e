"""mtlkit's overhead over plain PyTorch: one EW training step, and one epoch with validation.

python benchmarks/overhead.py --threads 1 --repeats 30 [--json PATH]

Both ratios come from the same run, each configuration timed interleaved with its plain
counterpart (one repeat of each in turn), medians of wall and CPU (process) time; the
``paired`` ratios are the medians of each repeat's own ratio (mtlkit / the plain run just
before it), which a load that drifts during the run moves less:

- step: ``Trainer.train_step`` with equal weighting (forward, checked losses, the method's
  backward, optimiser step, the step record) against a hand-written step on an identical model
  (forward, Σ_i L_i, backward, optimiser step);
- epoch: ``Trainer.fit`` for one epoch with validation, ``metrics.jsonl`` and checkpoints in a
  run folder, against a plain loop that does the same work: the training steps, a validation
  pass computing each task's mean loss and accuracy, one JSON line, the best weights, the
  model and the optimiser saved as safetensors + JSON, each written durably (temporary file,
  fsync, rename) as mtlkit writes its checkpoints.

The model is a hard-sharing MLP (``--width``, 3 layers) with ``--tasks`` 10-class heads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mtlkit.data.base import TensorLoader, TensorSplit
from mtlkit.experiments.bench import interleaved
from mtlkit.nn import build_model
from mtlkit.tasks import Task
from mtlkit.train import Trainer
from mtlkit.weighting import EW


class _Encoder(nn.Sequential):
    def __init__(self, features: int, width: int) -> None:
        super().__init__(
            nn.Linear(features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.out_features = width


def _problem(tasks: int, width: int, n: int, features: int = 64) -> tuple[Any, ...]:
    torch.manual_seed(0)
    task_list = [Task(f"t{i}", "classification", num_outputs=10) for i in range(tasks)]
    model = build_model("hps", _Encoder(features, width), task_list)
    x = torch.randn(n, features)
    ys = {t.name: torch.randint(0, 10, (n,)) for t in task_list}
    return task_list, model, x, ys


def _plain_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, ys: dict[str, Tensor]
) -> None:
    opt.zero_grad(set_to_none=True)
    out = model(x)
    loss = torch.stack([nn.functional.cross_entropy(out[t], y) for t, y in ys.items()]).sum()
    loss.backward()
    opt.step()


def _plain_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: TensorLoader,
    val: TensorLoader,
    folder: Path,
    epoch: int,
) -> None:
    model.train()
    totals: dict[str, float] = {}
    for x, ys in train:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        losses = {t: nn.functional.cross_entropy(out[t], y) for t, y in ys.items()}
        torch.stack(list(losses.values())).sum().backward()
        opt.step()
        for t, loss in losses.items():
            totals[t] = totals.get(t, 0.0) + float(loss.detach())
    model.eval()
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for x, ys in val:
            out = model(x)
            for t, y in ys.items():
                s = sums.setdefault(t, [0.0, 0.0, 0.0])
                s[0] += float(nn.functional.cross_entropy(out[t], y, reduction="sum"))
                s[1] += float((out[t].argmax(dim=1) == y).sum())
                s[2] += len(y)
    record = {
        "epoch": epoch,
        "train": {t: v / len(train) for t, v in totals.items()},
        "val": {t: {"loss": s[0] / s[2], "accuracy": s[1] / s[2]} for t, s in sums.items()},
    }
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _synced(folder / "best.st", lambda path: save_file(weights, path))  # the best epoch's weights
    _synced(folder / "model.st", lambda path: save_file(weights, path))
    state = opt.state_dict()
    tensors = {
        f"{i}.{k}": v
        for i, s in state["state"].items()
        for k, v in s.items()
        if isinstance(v, Tensor)
    }
    _synced(folder / "optimizer.st", lambda path: save_file(tensors, path))
    text = json.dumps({"epoch": epoch, "param_groups": state["param_groups"]})
    _synced(folder / "state.json", lambda path: path.write_text(text))


def _synced(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write`` to a temporary file, fsync it and rename it into place: the
    durable write a resumable run needs (mtlkit's checkpoints are written this way)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _timed(
    runs: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, dict[str, float]]:
    wall, cpu = interleaved(runs, repeats, warmup)
    result: dict[str, dict[str, float]] = {
        k: {"wall_ms": 1e3 * statistics.median(wall[k]), "cpu_ms": 1e3 * statistics.median(cpu[k])}
        for k in runs
    }
    first, second = list(runs)[:2]
    result["paired"] = {
        f"ratio_{kind}": statistics.median(b / a for a, b in zip(t[first], t[second], strict=True))
        for kind, t in (("wall", wall), ("cpu", cpu))
    }
    return result


def measure(
    tasks: int = 4, width: int = 256, batch: int = 128, batches: int = 40, repeats: int = 30
) -> dict[str, Any]:
    """The step and epoch figures, and their ratios (mtlkit / plain), wall and CPU time."""
    task_list, model, x, ys = _problem(tasks, width, batch * batches)
    xb, yb = x[:batch], {t: y[:batch] for t, y in ys.items()}
    plain_model = copy.deepcopy(model)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    trainer = Trainer(model, task_list, EW(), optimizer="adam", device="cpu", progress=False)
    steps = _timed(
        {
            "plain": lambda: _plain_step(plain_model, plain_opt, xb, yb),
            "mtlkit": lambda: trainer.train_step((xb, yb)),
        },
        repeats,
        warmup=5,
    )
    n_val = len(x) // 4
    train = TensorLoader(TensorSplit(x, ys, "train"), batch, shuffle=True)
    val = TensorLoader(TensorSplit(x[:n_val], {t: y[:n_val] for t, y in ys.items()}, "val"), batch)
    root = Path(tempfile.mkdtemp(prefix="mtlkit-overhead-"))
    count = {"plain": 0, "mtlkit": 0}

    def plain_epoch() -> None:
        count["plain"] += 1
        folder = root / f"plain{count['plain']}"
        folder.mkdir()
        m = copy.deepcopy(plain_model)
        _plain_epoch(m, torch.optim.Adam(m.parameters(), lr=1e-3), train, val, folder, 1)

    def mtlkit_epoch() -> None:
        count["mtlkit"] += 1
        folder = root / f"mtlkit{count['mtlkit']}"
        t = Trainer(
            copy.deepcopy(plain_model),
            task_list,
            EW(),
            optimizer="adam",
            epochs=1,
            device="cpu",
            progress=False,
            run_dir=folder,
            loggers=(),
            seed=None,
        )
        t.fit(train, val)

    try:
        epochs = _timed(
            {"plain": plain_epoch, "mtlkit": mtlkit_epoch}, max(3, repeats // 5), warmup=2
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"step": steps, "epoch": epochs}
    for part in ("step", "epoch"):
        figures = result[part]
        figures["ratio_wall"] = figures["mtlkit"]["wall_ms"] / figures["plain"]["wall_ms"]
        figures["ratio_cpu"] = figures["mtlkit"]["cpu_ms"] / figures["plain"]["cpu_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="training batches per epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started_cpu, started = time.process_time(), time.perf_counter()
    result = measure(args.tasks, args.width, args.batch, args.batches, args.repeats)
    result["run"] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "threads": args.threads,
        "load_average": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - started_cpu,
    }
    for part in ("step", "epoch"):
        f = result[part]
        print(
            f"{part:5s}  plain {f['plain']['wall_ms']:8.2f} ms (cpu {f['plain']['cpu_ms']:8.2f})"
            f"  mtlkit {f['mtlkit']['wall_ms']:8.2f} ms (cpu {f['mtlkit']['cpu_ms']:8.2f})"
            f"  ratio {f['ratio_wall']:.3f} (cpu {f['ratio_cpu']:.3f})"
            f"  paired {f['paired']['ratio_wall']:.3f} (cpu {f['paired']['ratio_cpu']:.3f})"
        )
    run = result["run"]
    print(
        f"threads {run['threads']}, load average "
        f"{', '.join(f'{v:.2f}' for v in run['load_average'])}"
        f", wall {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
