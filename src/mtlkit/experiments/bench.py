"""Step-time benchmark: every weighting method's cost as a ratio to equal weighting (EW).

One step is a forward pass plus ``method.backward`` (no optimiser step). The configurations of
one (model, T) cell are timed interleaved, one step each in turn, ``repeats`` times, and the
median is reported; ratios to EW come from the same cell, so load from other processes moves
numerator and denominator together. Peak memory is the peak of the CPU memory allocated by
torch operators during one step: each operator's own allocations minus frees
(``torch.profiler`` with ``profile_memory``), accumulated in start order, above the level when
the step began; an estimate at operator granularity, optional (``memory=True``).

Side by side, TorchJD's ``mtl_backward`` + ``jac_to_grad`` with the same aggregator (UPGrad,
MGDA, Mean) when ``torchjd`` is installed (``pip install 'mtlkit[bench]'``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.allocator import retain_freed_memory
from mtlkit.errors import ConfigError, MissingExtraError


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """The benchmark scripts' ``--malloc {default,retain}``: glibc's default, or freed memory
    kept for reuse as the ``mtlkit`` command does (:func:`apply_malloc_option`)."""
    parser.add_argument(
        "--malloc",
        choices=["default", "retain"],
        default="default",
        help="retain: keep freed memory for reuse (mtlkit.allocator, what the mtlkit command does)",
    )


def apply_malloc_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Act on ``--malloc``: ``retain`` calls :func:`~mtlkit.allocator.retain_freed_memory`
    (a usage error where it cannot apply)."""
    if args.malloc == "retain" and not retain_freed_memory():
        parser.error("--malloc retain needs glibc")


#: mtlkit method → TorchJD aggregator class name
TORCHJD_AGGREGATORS = {"upgrad": "UPGrad", "mgda": "MGDA", "ew": "Mean", "imtl_g": "IMTLG"}
MODELS = ("mlp", "cnn", "resnet")
#: the models a benchmark runs unless told otherwise
DEFAULT_MODELS = ("mlp", "cnn")


class _BenchHPS(nn.Module):
    """A shared trunk and T linear 10-class heads."""

    def __init__(self, encoder: nn.Module, width: int, tasks: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(nn.Linear(width, 10) for _ in range(tasks))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def forward_with_representation(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        rep = self.encoder(x)
        return {f"t{i}": h(rep) for i, h in enumerate(self.heads)}, rep


def build_bench_model(kind: str, tasks: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """The benchmark model, a batch and its targets (T × batch class labels).

    ``mlp``: trunk 256→512→512→512 (ReLU), batch 256. ``cnn``: conv 3→16→32 (3×3, BatchNorm,
    ReLU, the second strided), global pooling and a linear 32→64 layer, batch 64 of 3×32×32.
    ``resnet``: mtlkit's ResNet encoder (widths 16, 32, 64; two residual blocks per stage;
    global pooling), batch 32 of 3×32×32.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        enc = nn.Sequential(
            nn.Linear(256, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
        )
        x, width, batch = torch.randn(256, 256, generator=gen), 512, 256
    elif kind == "cnn":
        enc = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 64),
            nn.ReLU(),
        )
        x, width, batch = torch.randn(64, 3, 32, 32, generator=gen), 64, 64
    elif kind == "resnet":
        from mtlkit.nn.resnet import ResNetEncoder

        enc = ResNetEncoder(3, (16, 32, 64), 2)
        x, width, batch = torch.randn(32, 3, 32, 32, generator=gen), 64, 32
    else:
        raise ConfigError(f"bench: unknown model '{kind}'; available: {', '.join(MODELS)}")
    targets = torch.randint(0, 10, (tasks, batch), generator=gen)
    return _BenchHPS(enc, width, tasks), x, targets


def mtlkit_step(method: Any, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One training step of ``method`` on a bench model (cross-entropy per task), as a
    closure to time."""

    def run() -> None:
        model.zero_grad(set_to_none=True)
        outs, rep = model.forward_with_representation(x)  # type: ignore[operator]
        losses = {t: nn.functional.cross_entropy(o, y[i]) for i, (t, o) in enumerate(outs.items())}
        method.backward(losses, model, representation=rep)

    return run


def torchjd_step(aggregator: Any, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One training step of TorchJD (``mtl_backward`` on the representation, then
    ``jac_to_grad`` with ``aggregator``) on a bench model, as a closure to time."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    shared = model.shared_parameters()  # type: ignore[operator]

    def run() -> None:
        model.zero_grad(set_to_none=True)
        for p in shared:
            p.__dict__.pop("jac", None)
        outs, rep = model.forward_with_representation(x)  # type: ignore[operator]
        losses = [nn.functional.cross_entropy(o, y[i]) for i, o in enumerate(outs.values())]
        mtl_backward(losses, features=rep)
        jac_to_grad(shared, aggregator)

    return run


def _peak_memory(step: Callable[[], None]) -> float:
    """Peak CPU memory (MiB) allocated by torch operators during one step, above its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak / 2**20


def _configs(
    methods: Sequence[str], modes: Sequence[str], use_torchjd: bool
) -> list[tuple[str, str, Callable[[], Any]]]:
    """(method, mode, factory) for each configuration to time."""
    from mtlkit.weighting import WEIGHTINGS
    from mtlkit.weighting.gradient import GradientWeighting

    configs: list[tuple[str, str, Callable[[], Any]]] = [
        ("ew", "loss", lambda: WEIGHTINGS.build("ew"))
    ]
    for name in methods:
        cls = WEIGHTINGS.lookup(name)
        if name == "ew":
            continue
        if not (inspect.isclass(cls) and issubclass(cls, GradientWeighting)):
            configs.append((name, "loss", lambda n=name: WEIGHTINGS.build(n)))
            continue
        has_knob = "jacobian" in inspect.signature(cls).parameters
        for mode in modes if has_knob else ["shared"]:
            params = {"jacobian": mode} if has_knob else {}
            configs.append((name, mode, lambda n=name, p=params: WEIGHTINGS.build(n, **p)))
    if use_torchjd:
        import torchjd.aggregation as agg

        for name in ["ew", *methods]:
            if name in TORCHJD_AGGREGATORS and not any(
                c[1] == "torchjd" and c[0] == name for c in configs
            ):
                cls_name = TORCHJD_AGGREGATORS[name]
                configs.append((name, "torchjd", lambda c=cls_name: getattr(agg, c)()))
    return configs


def run_bench(
    tasks: Sequence[int] = (2, 5, 10),
    methods: Sequence[str] | None = None,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    modes: Sequence[str] = ("shared", "representation"),
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    torchjd: bool | None = None,
    memory: bool = False,
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Median step time of each method (and TorchJD), as ratios to EW, per model and T.

    ``methods``: registered names (default: all but 'compose'); ``modes``: the ``jacobian``
    settings timed for gradient methods; ``torchjd``: also time TorchJD where it has the same
    aggregator: ``None`` when it is installed (the 'bench' extra; a note says so when it is
    not), ``True`` always (a MissingExtraError without it), ``False`` never. Returns one dict
    per (model, T, method, mode) with ``ms`` (median wall milliseconds), ``ratio`` (to EW in
    the same cell), ``cpu_ms`` and ``cpu_ratio`` (the same in process CPU time, steadier on a
    loaded machine), ``load_average`` (1, 5, 15 minutes, when the cell ended) and ``peak_mib``
    (when ``memory``); prints them as a table.
    """
    import mtlkit.weighting as weighting
    from mtlkit.weighting import WEIGHTINGS

    del weighting  # imported for its registrations
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("bench: threads and repeats must be ≥ 1 and warmup ≥ 0")
    if any(int(t) < 1 for t in tasks):
        raise ConfigError(f"bench: option 'tasks' must be counts ≥ 1, got {list(tasks)}")
    names = [n for n in (methods or WEIGHTINGS.names()) if n != "compose"]
    for n in names:
        WEIGHTINGS.lookup(n)  # unknown names list the available ones
    if torchjd is not False:
        try:
            import torchjd as _  # noqa: F401
        except ImportError:
            if torchjd:
                raise MissingExtraError("torchjd", "bench", "the TorchJD comparison") from None
            print(
                "bench: TorchJD is not installed, so it is not timed side by side "
                "(pip install 'mtlkit[bench]' adds it)"
            )
            torchjd = False
        else:
            torchjd = True
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        for kind in models:
            for t in tasks:
                rows += _bench_cell(kind, int(t), names, modes, torchjd, repeats, warmup, memory)
    finally:
        torch.set_num_threads(previous)
    if print_table:
        print_rows(rows)
    return rows


def interleaved(
    runs: dict[Any, Callable[[], object]], repeats: int, warmup: int
) -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
    """Each run timed ``repeats`` times after ``warmup`` untimed rounds, one step of each in
    turn (so that load from other processes reaches all alike): the wall and process-CPU
    seconds of every step, by run."""
    wall: dict[Any, list[float]] = {k: [] for k in runs}
    cpu: dict[Any, list[float]] = {k: [] for k in runs}
    for r in range(warmup + repeats):
        for key, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            if r >= warmup:
                wall[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
    return wall, cpu


def paired_quartiles(times: Sequence[float], base: Sequence[float]) -> list[float]:
    """The first and third quartiles of the per-round ratios times[r] / base[r] (the steps of
    round r of :func:`interleaved` run back to back): the spread behind a ratio of medians."""
    ratios = [t / b for t, b in zip(times, base, strict=True) if b > 0]
    if len(ratios) < 2:
        return [float("nan"), float("nan")]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return [q1, q3]


def _bench_cell(
    kind: str,
    t: int,
    names: Sequence[str],
    modes: Sequence[str],
    use_torchjd: bool,
    repeats: int,
    warmup: int,
    memory: bool,
) -> list[dict[str, Any]]:
    steps: list[tuple[str, str, Callable[[], None]]] = []
    for name, mode, factory in _configs(names, modes, use_torchjd):
        model, x, y = build_bench_model(kind, t)
        try:
            method = factory()
        except Exception as err:  # a method that cannot run here is reported, not fatal
            print(f"bench: skipping {name} ({mode}): {err}")
            continue
        make = torchjd_step if mode == "torchjd" else mtlkit_step
        steps.append((name, mode, make(method, model, x, y)))
    times, cpu = interleaved({(n, m): run for n, m, run in steps}, repeats, warmup)
    base = statistics.median(times[("ew", "loss")])
    base_cpu = statistics.median(cpu[("ew", "loss")])
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    rows = []
    for name, mode, run in steps:
        ms = statistics.median(times[(name, mode)])
        cpu_ms = statistics.median(cpu[(name, mode)])
        row: dict[str, Any] = {
            "model": kind,
            "T": t,
            "method": name,
            "mode": mode,
            "ms": 1e3 * ms,
            "ratio": ms / base,
            "cpu_ms": 1e3 * cpu_ms,
            "cpu_ratio": cpu_ms / base_cpu if base_cpu > 0 else float("nan"),
            "cpu_ratio_quartiles": paired_quartiles(cpu[(name, mode)], cpu[("ew", "loss")]),
            "load_average": load,
        }
        if memory:
            row["peak_mib"] = _peak_memory(run)
        rows.append(row)
    return rows


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Print benchmark rows as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="step time (forward + method.backward), median; ratio to EW "
        "(cpu_iqr: quartiles of the per-round CPU ratios)"
    )
    columns = ["model", "T", "method", "mode", "ms", "ratio", "cpu_ratio", "cpu_iqr"]
    if rows and "peak_mib" in rows[0]:
        columns.append("peak_mib")
    for c in columns:
        numeric = ("T", "ms", "ratio", "cpu_ratio", "cpu_iqr", "peak_mib")
        table.add_column(c, justify="right" if c in numeric else "left")
    for row in rows:
        cells = {
            c: f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
            for c in columns
        }
        if "cpu_ratio_quartiles" in row:
            q1, q3 = row["cpu_ratio_quartiles"]
            cells["cpu_iqr"] = f"{q1:.2f}–{q3:.2f}" if q1 == q1 else "–"  # NaN: one round
        table.add_row(*[cells[c] for c in columns])
    Console().print(table)
