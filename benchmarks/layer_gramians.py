"""Gramian methods in shared mode against EW and TorchJD: CPU and wall time, peak memory.

python benchmarks/layer_gramians.py --models mlp cnn --tasks 2 5 10 40 --threads 1

Per (model, T): EW, the chosen mtlkit methods (``jacobian='shared'``; with ``--layerwise`` also
each with the engine's batched layer-wise path forced, ``METHOD:layerwise``, the baseline of its
one-pass-per-task rule for convolutional encoders) and, when installed,
TorchJD's ``mtl_backward`` + ``jac_to_grad`` with the same aggregator, timed interleaved (one
step each in turn), medians of process CPU time and wall time, each as a ratio to EW in the
same cell (so load from other processes moves both). With ``--memory``, the peak resident
memory growth of one step is measured per configuration in a fresh process (glibc's mmap
threshold fixed, so that freed large blocks go back to the OS; the peak is reset after
warm-up through /proc/self/clear_refs; Linux only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch

from mtlkit.experiments.bench import (
    DEFAULT_MODELS,
    MODELS,
    TORCHJD_AGGREGATORS,
    add_malloc_option,
    apply_malloc_option,
    build_bench_model,
    interleaved,
    mtlkit_step,
    torchjd_step,
)


def _step(kind: str, t: int, name: str) -> Callable[[], None]:
    model, x, y = build_bench_model(kind, t)
    if name.startswith("torchjd:"):
        import torchjd.aggregation as agg

        return torchjd_step(getattr(agg, TORCHJD_AGGREGATORS[name[8:]])(), model, x, y)
    from mtlkit.weighting import WEIGHTINGS

    base, _, variant = name.partition(":")
    method = WEIGHTINGS.build(base) if base == "ew" else WEIGHTINGS.build(base, jacobian="shared")
    step = mtlkit_step(method, model, x, y)
    if variant != "layerwise":
        return step

    def layerwise() -> None:
        """The step with the engine's batched layer-wise path where it would take one pass per
        task (``passes_pay``: convolutional encoders on CPU), as the baseline of that rule."""
        import mtlkit.weighting._engine.gram as gram_mod
        import mtlkit.weighting.gradient as gradient_mod

        saved = gram_mod.passes_pay, gradient_mod.passes_pay
        gram_mod.passes_pay = gradient_mod.passes_pay = lambda model, inputs: False
        try:
            step()
        finally:
            gram_mod.passes_pay, gradient_mod.passes_pay = saved

    return layerwise


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _memory_child(kind: str, t: int, name: str) -> None:
    step = _step(kind, t, name)
    for _ in range(3):
        step()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(3):
        step()
    print(f"{_status_mib('VmHWM') - base:.1f}")


def _peak_rss(kind: str, t: int, name: str, threads: int) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--child", kind, str(t), name, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 40])
    parser.add_argument("--methods", nargs="+", default=["upgrad", "mgda"])
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--no-torchjd", action="store_true")
    parser.add_argument(
        "--layerwise",
        action="store_true",
        help="also time each method with the batched layer-wise path forced (METHOD:layerwise)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        kind, t, name = args.child
        _memory_child(kind, int(t), name)
        return
    apply_malloc_option(parser, args)
    names = ["ew", *args.methods]
    if args.layerwise:
        names += [f"{m}:layerwise" for m in args.methods]
    if not args.no_torchjd:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            print("TorchJD is not installed: pip install 'mtlkit[bench]' to compare")
        else:
            names += [f"torchjd:{m}" for m in ["ew", *args.methods] if m in TORCHJD_AGGREGATORS]
    print(f"threads {args.threads}; malloc {args.malloc}; load average {os.getloadavg()}")
    header = (
        f"{'model':5} {'T':>3} {'config':16} {'cpu ms':>8} {'cpu x':>6} "
        f"{'wall ms':>8} {'wall x':>6}"
    )
    print(header + ("  peak MiB" if args.memory else ""))
    for kind in args.models:
        for t in args.tasks:
            steps = {n: _step(kind, t, n) for n in names}
            wall, cpu = interleaved(steps, args.repeats, args.warmup)
            del steps
            base_c, base_w = statistics.median(cpu["ew"]), statistics.median(wall["ew"])
            for n in names:
                c, w = statistics.median(cpu[n]), statistics.median(wall[n])
                line = (
                    f"{kind:5} {t:>3} {n:16} {1e3 * c:8.1f} {c / base_c:6.2f} "
                    f"{1e3 * w:8.1f} {w / base_w:6.2f}"
                )
                if args.memory:
                    line += f"  {_peak_rss(kind, t, n, args.threads):8.1f}"
                print(line, flush=True)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
