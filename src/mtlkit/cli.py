"""The ``mtlkit`` command line.

Exit codes: 0 success, 2 bad input (a config, a path, an argument: the message says what and
where, with no traceback), 1 an internal error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from mtlkit.errors import MtlkitError

app = typer.Typer(
    name="mtlkit",
    help="Multi-task learning: train, evaluate and compare multi-task models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def _overrides(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MtlkitError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got '{item}'")
        out[key] = yaml.safe_load(raw)
    return out


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Built-in dataset: multidigits or gss.")] = (
        "multidigits"
    ),
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/demo-...).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per model.")] = None,
) -> None:
    """Train single-task models and one multi-task model on built-in data; compare them."""
    from mtlkit.experiments.demo import run_demo

    run_demo(dataset, out=out, epochs=epochs, console=console)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    resume: Annotated[Path | None, typer.Option(help="Run folder to continue.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>-...).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE.")
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this epoch; continue later with --resume.")
    ] = None,
) -> None:
    """Train the model a config describes, into a run folder."""
    from mtlkit.config import load_config
    from mtlkit.experiments.run import new_run_dir, train_run

    cfg = load_config(config, _overrides(set_))
    if resume is not None and out is not None and resume != out:
        raise MtlkitError("give either --resume RUN_DIR or --out RUN_DIR, not both")
    run_dir = resume or out or new_run_dir("runs", cfg.name)
    results = train_run(cfg, Path(run_dir), resume=resume is not None, stop_after=stop_after)
    _print_metrics(results["test"], f"Test metrics (best epoch {results['best_epoch']})")
    console.print(f"Run folder: {run_dir}")


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mtlkit train`.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
) -> None:
    """Evaluate a trained run's selected model on a split."""
    from mtlkit.experiments.run import evaluate_run

    _print_metrics(evaluate_run(run_dir, split), f"{split} metrics of {run_dir}")


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
    torchjd: Annotated[bool, typer.Option(help="Time TorchJD beside (extra 'bench').")] = True,
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


@app.command("list")
def list_components() -> None:
    """The registered components of each kind (names usable in configs)."""
    for kind, names in registries().items():
        console.print(f"[bold]{kind}[/]: {', '.join(names)}")


def registries() -> dict[str, list[str]]:
    """Every registry's names, by kind."""
    import mtlkit  # noqa: F401  (registers the built-in components)
    from mtlkit.data import DATASETS
    from mtlkit.losses import LOSSES
    from mtlkit.metrics import METRICS
    from mtlkit.nn import ARCHITECTURES, ENCODERS, HEADS
    from mtlkit.tasks import TASK_KINDS
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
        errors.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
