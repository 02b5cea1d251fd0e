"""The ``mtlkit`` command line.

Exit codes: 0 success, 2 bad input (a config, a path, an argument: the message says what and
where, with no traceback), 1 an internal error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlkit.allocator import retain_freed_memory
from mtlkit.errors import MtlkitError

app = typer.Typer(
    name="mtlkit",
    help="Multi-task learning: train, evaluate and compare multi-task models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole


#: ``--set KEY=VALUE`` (repeatable): override one field of the config
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE.")]


def _overrides(values: list[str] | None) -> dict[str, Any]:
    from mtlkit.config import parse_override

    return dict(parse_override(item) for item in values or [])


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Built-in dataset: multidigits or gss.")] = (
        "multidigits"
    ),
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/demo-...).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per model.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds (3: a 95 % interval; 1 decides nothing).")] = 3,
    patience: Annotated[
        int | None, typer.Option(help="Stop a run after this many epochs without improvement.")
    ] = None,
) -> None:
    """Single-task models against one multi-task model on built-in data, over seeds: the
    verdict with its interval, and what each costs."""
    from mtlkit.experiments.demo import run_demo

    run_demo(dataset, out=out, epochs=epochs, console=console, seeds=seeds, patience=patience)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    resume: Annotated[Path | None, typer.Option(help="Run folder to continue.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>-...).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Move a run already in --out aside (to OUT.old-<time>).")
    ] = False,
    set_: SetOption = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this epoch; continue later with --resume.")
    ] = None,
) -> None:
    """Train the model a config describes, into a run folder (under torchrun: on every rank,
    data-parallel; see docs/distributed.md)."""
    from mtlkit.config import load_config
    from mtlkit.experiments.run import new_run_dir, train_run
    from mtlkit.train.distributed import (
        StopTogether,
        init_distributed,
        launched_by_torchrun,
        teardown,
    )

    if stop_after is not None and stop_after < 1:
        raise MtlkitError(f"--stop-after must be ≥ 1 (the epoch to stop after), got {stop_after}")
    if resume is not None and out is not None and resume != out:
        raise MtlkitError("give either --resume RUN_DIR or --out RUN_DIR, not both")
    if resume is not None and overwrite:
        raise MtlkitError("--overwrite starts a new run; it cannot be combined with --resume")
    cfg = load_config(config, _overrides(set_))
    ctx = init_distributed() if launched_by_torchrun() else None
    watch = StopTogether(ctx).start() if ctx is not None else None
    run_dir: Any = None
    try:
        if ctx is None or ctx.is_main:
            run_dir = resume or out or new_run_dir("runs", cfg.name)
        if ctx is not None:  # one folder for all ranks: rank 0's
            run_dir = ctx.broadcast_object(str(run_dir) if ctx.is_main else None)
        results = train_run(
            cfg,
            Path(run_dir),
            resume=resume is not None,
            stop_after=stop_after,
            if_exists="overwrite" if overwrite else "error",
        )
    except KeyboardInterrupt:
        if watch is not None:
            watch.stop()
        if (ctx is None or ctx.is_main) and run_dir is not None:
            _interrupted(config, Path(run_dir), set_)
        raise typer.Exit(130) from None
    except Exception as err:
        if ctx is None or watch is None:
            raise
        _distributed_failure(ctx.rank, err, watch)  # raises
    if watch is not None:
        watch.stop()
    teardown()
    if ctx is None or ctx.is_main:
        _print_metrics(results["test"], f"Test metrics (best epoch {results['best_epoch']})")
        console.print(f"Run folder: {run_dir}")


def _interrupted(config: Path, run_dir: Path, sets: list[str] | None) -> None:
    """What Ctrl-C left, and how to continue."""
    import json

    state = run_dir / "checkpoint" / "state.json"
    try:
        epoch = json.loads(state.read_text(encoding="utf-8")).get("s:epoch")
    except (OSError, ValueError):
        epoch = None
    extra = "".join(f" --set {s}" for s in sets or [])
    if epoch is None:
        errors.print(f"interrupted before the first checkpoint; nothing to resume in {run_dir}")
        return
    errors.print(
        f"interrupted: the checkpoint of epoch {epoch} in {run_dir} is complete (nothing is "
        f"half-written). Continue with:\n  mtlkit train {config} --resume {run_dir}{extra}",
        highlight=False,
    )


def _distributed_failure(rank: int, err: Exception, watch: Any) -> None:
    """This rank failed under torchrun: tell the other ranks (they stop within a second or
    so), print one line (a traceback only for an internal error) and exit non-zero. The
    process group is not torn down: a lost peer can make that wait."""
    from mtlkit.train.distributed import (
        collective_timeout,
        failure_line,
        is_collective_failure,
    )

    if isinstance(err, MtlkitError):
        watch.abort(f"error: {err}")
        raise err
    if not is_collective_failure(err):
        watch.abort(f"internal error {type(err).__name__}: {err}"[:300])
        raise err
    import re

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # gloo's source location
    what = (
        "a collective failed: another rank was lost or did not answer within "
        f"MTLKIT_DIST_TIMEOUT={collective_timeout():g} s ({type(err).__name__}: {first})"
    )
    watch.abort(what)
    errors.print(
        escape(failure_line(rank, f"training stopped: {what}; every rank stops")),
        highlight=False,
    )
    raise typer.Exit(1) from None


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mtlkit train`.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
) -> None:
    """Evaluate a trained run's selected model on a split."""
    from mtlkit.experiments.run import evaluate_run

    if not run_dir.is_dir():
        raise MtlkitError(f"{run_dir} is not a run folder (no such folder)")
    _print_metrics(evaluate_run(run_dir, split), f"{split} metrics of {run_dir}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mtlkit train`.")],
    input: Annotated[
        Path, typer.Option("--input", help="Rows to predict: .csv, .jsonl, .parquet.")
    ],
    output: Annotated[
        Path, typer.Option("--output", help="Where to write: .csv, .jsonl, .parquet.")
    ],
    probabilities: Annotated[
        bool, typer.Option(help="Write class probabilities instead of labels.")
    ] = False,
) -> None:
    """Predict every row of a file with a trained run's selected model."""
    from mtlkit.experiments.inference import predict_file

    n = predict_file(run_dir, input, output, probabilities=probabilities)
    console.print(f"{n} predictions written to {output}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mtlkit train`.")],
    format: Annotated[str, typer.Option("--format", help="onnx or torch-export.")],
    output: Annotated[Path | None, typer.Option(help="The file to write.")] = None,
) -> None:
    """Export a trained run's selected model (ONNX needs the extra `onnx`)."""
    from mtlkit.experiments.inference import export_run

    console.print(f"exported to {export_run(run_dir, format, output)}")


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


@app.command()
def bench(
    tasks: Annotated[str, typer.Option(help="Task counts T, comma-separated.")] = "2,5,10",
    methods: Annotated[str | None, typer.Option(help="Methods (default: all).")] = None,
    models: Annotated[str, typer.Option(help="Models: mlp, cnn.")] = "mlp,cnn",
    modes: Annotated[str, typer.Option(help="Jacobian modes of gradient methods.")] = (
        "shared,representation"
    ),
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed steps per cell.")] = 20,
    memory: Annotated[bool, typer.Option(help="Also estimate peak memory.")] = False,
    torchjd: Annotated[
        bool | None,
        typer.Option(help="Time TorchJD beside (extra 'bench'; default: when installed)."),
    ] = None,
) -> None:
    """Median step time of every loss-balancing method, as ratios to equal weighting."""
    from mtlkit.experiments.bench import run_bench

    try:
        counts = [int(t) for t in _csv(tasks) or []]
    except ValueError:
        raise MtlkitError(f"--tasks expects integers like 2,5,10, got '{tasks}'") from None
    run_bench(
        counts,
        _csv(methods),
        models=_csv(models) or [],
        modes=_csv(modes) or [],
        threads=threads,
        repeats=repeats,
        memory=memory,
        torchjd=torchjd,
    )


@app.command()
def affinity(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Budget: at most this many epochs (default: no limit).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Budget: at most this many steps.")] = None,
    every: Annotated[int, typer.Option(help="Measure every this many steps.")] = 5,
    min_measured: Annotated[int, typer.Option(help="Measure at least this many steps.")] = 30,
    max_measured: Annotated[int, typer.Option(help="Measure at most this many steps.")] = 200,
    rel_stderr: Annotated[
        float, typer.Option(help="Stop when every standard error ≤ this × the typical score.")
    ] = 0.25,
    lr: Annotated[float | None, typer.Option(help="Lookahead step (default: the lr).")] = None,
    set_: SetOption = None,
) -> None:
    """Gradient cosines, conflicts and TAG lookahead affinity of every task pair, ± standard
    errors; measures until the errors are small (see docs/affinity.md)."""
    import numpy as np

    from mtlkit.analysis.affinity import UNITS, format_estimate
    from mtlkit.config import load_config
    from mtlkit.experiments.affinity import run_affinity
    from mtlkit.experiments.run import new_run_dir

    cfg = load_config(config, _overrides(set_))
    out_dir = out or new_run_dir("runs", f"{cfg.name}-affinity")
    result = run_affinity(
        cfg,
        out_dir,
        epochs=epochs,
        steps=steps,
        every=every,
        lr=lr,
        min_measured=min_measured,
        max_measured=max_measured,
        rel_stderr=rel_stderr,
    )
    for measure in ("cosine", "conflict", "tag"):
        table = Table(
            title=f"{measure}, row i → column j: mean ± standard error",
            caption=UNITS[measure],
        )
        table.add_column("")
        for t in result.tasks:
            table.add_column(t, justify="right")
        errs = result.stderr(measure)
        for i, (t, row) in enumerate(zip(result.tasks, result.matrix(measure), strict=True)):
            table.add_row(
                t,
                *("—" if i == j else format_estimate(v, errs[i, j]) for j, v in enumerate(row)),
            )
        console.print(table)
    cost = result.seconds["measure_per_step_vs_train_step"]
    why = {
        "precise": f"every standard error ≤ {rel_stderr:g} × the typical score",
        "max_measured": f"reached --max-measured {max_measured}; the errors are still large "
        "relative to the scores: read the ± before trusting a pair",
        "budget": "the --epochs/--steps budget ended it before the errors were small; "
        "read the ± before trusting a pair",
    }.get(result.stop, result.stop)
    console.print(
        f"{result.steps} measured steps (every {every} training steps), stopped: {why}. "
        f"Measuring cost {cost:.2f}× a training step per step. Written to {out_dir}"
    )
    tag = result.matrix("tag")
    off = ~np.eye(len(result.tasks), dtype=bool)
    if result.lr is not None and float(np.sqrt(np.mean(tag[off] ** 2))) < 0.01:
        console.print(
            f"The lookahead scores are below 0.01 %: the lookahead step (η = {result.lr:g}, "
            "the learning rate unless --lr) is small for this model's gradients. They still "
            "rank the pairs where their errors are small; --lr gives larger numbers."
        )


@app.command()
def group(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    models: Annotated[int, typer.Option("--models", "-k", help="At most this many models.")] = 2,
    affinity_file: Annotated[
        Path | None, typer.Option("--affinity", help="affinity.json (default: measure it).")
    ] = None,
    measure: Annotated[str, typer.Option(help="tag or cosine.")] = "tag",
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for robustness.")] = 200,
    verify: Annotated[bool, typer.Option(help="Train the grouping, all-in-one and STL.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    set_: SetOption = None,
) -> None:
    """Choose which tasks to train together in at most k models, and how robust that is."""
    from mtlkit.config import load_config
    from mtlkit.experiments.group import print_grouping, run_group
    from mtlkit.experiments.run import new_run_dir

    cfg = load_config(config, _overrides(set_))
    out_dir = out or new_run_dir("runs", f"{cfg.name}-group")
    result = run_group(
        cfg, out_dir, models, affinity_file, measure, verify, console, resamples=resamples
    )
    print_grouping(result, models, console)
    for name, choice in result.get("verify", {}).items():
        console.print(f"{name}: Δm = {choice['delta_m']:+.2f} % vs single-task models")


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    methods: Annotated[str | None, typer.Option(help="Methods, e.g. ew,uw,pcgrad.")] = None,
    architectures: Annotated[str | None, typer.Option(help="Architectures, e.g. hps,mmoe.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per model (≥ 2 for an interval).")] = 3,
    max_epochs: Annotated[
        int | None, typer.Option(help="Epoch budget of every run (default: train.epochs).")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Epochs without validation improvement before a run stops "
            "(default: train.patience, else 5)."
        ),
    ] = None,
    efficiency: Annotated[
        bool, typer.Option(help="Measure inference latency, throughput and memory.")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Folder (re-use it to resume).")] = None,
    set_: SetOption = None,
) -> None:
    """Single-task baselines against every chosen method and architecture, over seeds, under
    one convergence protocol (docs/protocol.md): Δm with a 95 % interval and a verdict."""
    from mtlkit.config import load_config
    from mtlkit.experiments.compare import print_summary, run_compare
    from mtlkit.experiments.run import new_run_dir

    cfg = load_config(config, _overrides(set_))
    out_dir = out or new_run_dir("runs", f"{cfg.name}-compare")
    summary = run_compare(
        cfg,
        out_dir,
        _csv(methods),
        _csv(architectures),
        seeds=seeds,
        console=console,
        patience=patience,
        max_epochs=max_epochs,
        efficiency=efficiency,
    )
    print_summary(summary, console)
    console.print(f"Written to {out_dir} (compare.json, compare.csv, compare.md)")


@app.command()
def advise(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    budget: Annotated[
        float | None,
        typer.Option(help="Minutes in all; seeds, epochs and affinity steps are cut to fit."),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds wanted (default 3).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder (re-use it to resume).")] = None,
    set_: SetOption = None,
) -> None:
    """Which tasks together, MTL or one model per task, which method: one page of advice
    (affinity and grouping, STL vs EW, UW and UPGrad over seeds, verdicts, costs)."""
    from mtlkit.config import load_config
    from mtlkit.experiments.advise import print_advice, run_advise
    from mtlkit.experiments.run import new_run_dir

    cfg = load_config(config, _overrides(set_))
    out_dir = out or new_run_dir("runs", f"{cfg.name}-advise")
    advice = run_advise(cfg, out_dir, budget_minutes=budget, seeds=seeds, console=console)
    print_advice(advice, console)
    console.print(f"Written to {out_dir} (advise.html, advise.json)")


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    trials: Annotated[int, typer.Option(help="Optuna trials in all (resumed ones count).")] = 20,
    folds: Annotated[int, typer.Option(help="Folds of the training split.")] = 3,
    param: Annotated[
        list[str] | None, typer.Option(help="Method option range NAME=LOW:HIGH[:log].")
    ] = None,
    holdout_seeds: Annotated[
        int, typer.Option(help="Seeds of the held-out check on the test split (0: skip).")
    ] = 1,
    out: Annotated[Path | None, typer.Option(help="Folder (re-use it to resume).")] = None,
    set_: SetOption = None,
) -> None:
    """Static task weights (and method options) by k-fold cross-validation (Optuna), checked
    on held-out data against equal weights and single-task models."""
    from mtlkit.config import load_config
    from mtlkit.experiments.run import new_run_dir
    from mtlkit.experiments.tune import parse_param_ranges, print_tune, run_tune

    cfg = load_config(config, _overrides(set_))
    ranges = parse_param_ranges(param)
    out_dir = out or new_run_dir("runs", f"{cfg.name}-tune")
    result = run_tune(
        cfg, out_dir, trials, folds, ranges, console=console, holdout_seeds=holdout_seeds
    )
    print_tune(result, console)
    advice = (result.get("holdout") or {}).get("advice", "")
    lead = "To train one model anyway" if advice.startswith("Use single") else "Train with them"
    console.print(f"{lead}: mtlkit train {Path(out_dir) / 'tuned.yaml'}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run, comparison or affinity folder.")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page with the run's plots, tables and config."""
    from mtlkit.experiments.report import build_report

    console.print(f"Report: {build_report(run_dir, out)}")


@app.command("list")
def list_components() -> None:
    """The registered components of each kind (names usable in configs)."""
    for kind, names in registries().items():
        console.print(f"[bold]{kind}[/]: {', '.join(names)}")


def registries() -> dict[str, list[str]]:
    """Every registry's names, by kind."""
    import mtlkit  # noqa: F401  (registers the built-in components)
    from mtlkit.data import DATASETS
    from mtlkit.data.samplers import TASK_SAMPLERS
    from mtlkit.nn import ARCHITECTURES, ENCODERS, HEADS
    from mtlkit.tasks import LOSSES, METRICS, TASK_KINDS
    from mtlkit.train.optim import OPTIMIZERS, SCHEDULERS
    from mtlkit.weighting import WEIGHTINGS

    return {
        "datasets": DATASETS.names(),
        "task kinds": TASK_KINDS.names(),
        "architectures": ARCHITECTURES.names(),
        "encoders": ENCODERS.names(),
        "heads": HEADS.names(),
        "losses": LOSSES.names(),
        "metrics": METRICS.names(),
        "weighting methods": WEIGHTINGS.names(),
        "optimizers": OPTIMIZERS.names(),
        "task samplers": TASK_SAMPLERS.names(),
        "schedulers": SCHEDULERS.names(),
    }


def _print_metrics(results: dict[str, dict[str, float]], title: str) -> None:
    table = Table(title=title)
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, metrics in results.items():
        for name, value in metrics.items():
            table.add_row(task, name, f"{value:.4f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user errors print one message, no traceback."""
    try:
        app(args=argv, prog_name="mtlkit")  # standalone: usage errors exit 2 by themselves
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except MtlkitError as err:
        errors.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    return 0


def entry() -> None:
    """Console-script entry point: the process keeps freed memory for reuse
    (:func:`mtlkit.allocator.retain_freed_memory`), then runs the command."""
    retain_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    entry()
