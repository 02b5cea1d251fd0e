"""The matrix-product floor of an exact shared-mode step on the benchmark CNN, beside the steps.

python benchmarks/cnn_floor.py --tasks 10 --threads 1 --repeats 25

Any exact per-task gradient of the benchmark CNN's shared parameters (what a Gramian method in
shared mode needs, TorchJD's Jacobian included) runs, besides one forward pass, three products
per task that EW's step runs once: the second (strided) convolution's input gradient, which
carries each task's gradient down to the first layer, and the per-task weight gradients of both
convolutions. This script times those kernels alone at T tasks, in their fastest form found on
this CPU (oneDNN on channels-last memory with the tasks folded into the batch; one folded
``convolution_backward`` for the second layer's weights; the first layer's from its unfolded
patches), with no layout copy, no batch norm, no ReLU and no Gram matrix, interleaved with EW's
step, mtlkit's UPGrad step and (when installed) TorchJD's, medians of wall and CPU time. The
floor's ratio to EW is what no implementation made of PyTorch operators goes below on this
model; the elementwise passes (batch norm, ReLU: memory-bound, over T × the activation) come on
top unless a generated kernel fuses them: the script also times them as PyTorch operators,
each once and without layout copies ("floor + ReLU/BN passes": what an eager implementation
with no wasted pass would cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.experiments.bench import (
    TORCHJD_AGGREGATORS,
    add_malloc_option,
    apply_malloc_option,
    build_bench_model,
    interleaved,
    mtlkit_step,
    torchjd_step,
)


def _conv_backward(grad, x, weight, stride, mask):  # type: ignore[no-untyped-def]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, [1, 1], [1, 1], False, [0, 0], 1, mask
    )


def floor_kernels(t: int) -> dict[str, Callable[[], None]]:
    """The per-task products of the benchmark CNN at ``t`` tasks, on random data of the real
    shapes: batch 64 of 3 × 32 × 32, conv 3→16 (3×3), conv 16→32 (3×3, stride 2)."""
    gen = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x0 = torch.randn(64, 3, 32, 32, generator=gen)
    x1 = torch.randn(64, 16, 32, 32, generator=gen)
    w2 = torch.randn(32, 16, 3, 3, generator=gen).contiguous(memory_format=cl)
    rows2 = torch.randn(t * 64, 32, 16, 16, generator=gen).contiguous(memory_format=cl)
    placeholder = torch.empty(t * 64, 16, 32, 32, memory_format=cl)
    folded2 = torch.randn(64, t * 32, 16, 16, generator=gen)
    weights2 = torch.zeros(()).expand(t * 32, 16, 3, 3)
    patches = F.unfold(x0, 3, padding=1).transpose(1, 2).contiguous()  # 64 × 1024 × 27
    rows1 = torch.randn(t, 64, 16, 1024, generator=gen)
    out1 = torch.empty(t, 16, 27)

    def conv2_input() -> None:
        _conv_backward(rows2, placeholder, w2, [2, 2], [True, False, False])

    def conv2_weight() -> None:
        _conv_backward(folded2, x1, weights2, [2, 2], [False, True, False])

    def conv1_weight() -> None:
        for i in range(t):
            torch.sum(torch.bmm(rows1[i], patches), dim=0, out=out1[i])

    return {
        "conv2 input grads": conv2_input,
        "conv2 weight grads": conv2_weight,
        "conv1 weight grads": conv1_weight,
    }


def elementwise_passes(t: int) -> dict[str, Callable[[], None]]:
    """The batch norms' and ReLUs' backward over the T task rows as PyTorch operators, each
    once and in the layout it runs fastest in (no layout copy): the ReLU masks, each batch
    norm's channel sums (Σ g and Σ g x̂, one read each) and the second batch norm's input
    gradient (two passes: eager PyTorch has no single operator for it)."""
    gen = torch.Generator().manual_seed(1)
    out: dict[str, Callable[[], None]] = {}
    for name, shape in (("layer 1", (64, 16, 32, 32)), ("layer 2", (64, 32, 16, 16))):
        rows = torch.randn(t, *shape, generator=gen)
        mask = torch.randn(1, *shape, generator=gen).relu()
        xhat = torch.randn(*shape, generator=gen)
        b, c = shape[:2]
        scale = torch.rand(1, c, 1, 1, generator=gen)
        shift = torch.rand(t, 1, c, 1, 1, generator=gen)

        def passes(
            rows: Tensor = rows,
            mask: Tensor = mask,
            xhat: Tensor = xhat,
            scale: Tensor = scale,
            shift: Tensor = shift,
            bc: int = b * c,
            second: bool = name == "layer 2",
        ) -> None:
            g = torch.ops.aten.threshold_backward(rows, mask, 0)
            g.sum(dim=(1, 3, 4))
            torch.bmm(g.reshape(t, bc, -1).transpose(0, 1), xhat.reshape(bc, -1, 1))
            if second:
                dx = g * scale
                dx.addcmul_(xhat, shift)

        out[f"ReLU + BN passes, {name}"] = passes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    add_malloc_option(parser)
    args = parser.parse_args()
    apply_malloc_option(parser, args)
    torch.set_num_threads(args.threads)
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        import torchjd.aggregation as agg
    except ImportError:
        agg = None
    for t in args.tasks:
        runs: dict[str, Callable[[], None]] = {}
        from mtlkit.weighting import WEIGHTINGS

        model, x, y = build_bench_model("cnn", t)
        runs["EW step"] = mtlkit_step(WEIGHTINGS.build("ew"), model, x, y)
        fwd_model, fx, _ = build_bench_model("cnn", t)

        def forward(m=fwd_model, inp=fx) -> None:  # type: ignore[no-untyped-def]
            with torch.no_grad():
                m.forward_with_representation(inp)

        runs["forward"] = forward
        runs.update(floor_kernels(t))
        runs.update(elementwise_passes(t))
        model, x, y = build_bench_model("cnn", t)
        runs["mtlkit UPGrad (shared)"] = mtlkit_step(
            WEIGHTINGS.build("upgrad", jacobian="shared"), model, x, y
        )
        if agg is not None:
            model, x, y = build_bench_model("cnn", t)
            aggregator = getattr(agg, TORCHJD_AGGREGATORS["upgrad"])()
            runs["TorchJD UPGrad"] = torchjd_step(aggregator, model, x, y)
        wall, cpu = interleaved(runs, args.repeats, args.warmup)
        med = {k: 1e3 * statistics.median(v) for k, v in wall.items()}
        med_cpu = {k: 1e3 * statistics.median(v) for k, v in cpu.items()}
        ew, ew_cpu = med["EW step"], med_cpu["EW step"]
        print(f"CNN, T = {t}: ms wall (CPU), ratio to the EW step wall (CPU)")
        for name in runs:
            print(
                f"  {name:26s} {med[name]:8.1f} ({med_cpu[name]:6.1f})"
                f"   {med[name] / ew:5.2f} ({med_cpu[name] / ew_cpu:5.2f})"
            )
        parts = ["forward", *floor_kernels(1)]
        floor, floor_cpu = sum(med[p] for p in parts), sum(med_cpu[p] for p in parts)
        print(
            f"  {'floor (forward + products)':26s} {floor:8.1f} ({floor_cpu:6.1f})"
            f"   {floor / ew:5.2f} ({floor_cpu / ew_cpu:5.2f})"
        )
        eager = floor + sum(med[p] for p in elementwise_passes(1))
        eager_cpu = floor_cpu + sum(med_cpu[p] for p in elementwise_passes(1))
        print(
            f"  {'floor + ReLU/BN passes':26s} {eager:8.1f} ({eager_cpu:6.1f})"
            f"   {eager / ew:5.2f} ({eager_cpu / ew_cpu:5.2f})"
        )
        if "TorchJD UPGrad" in med:
            need, need_cpu = med["TorchJD UPGrad"] / 2.5, med_cpu["TorchJD UPGrad"] / 2.5
            print(
                f"  {'TorchJD / 2.5':26s} {need:8.1f} ({need_cpu:6.1f})"
                f"   {need / ew:5.2f} ({need_cpu / ew_cpu:5.2f})"
            )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{' '.join(['python', *sys.argv])}: threads {args.threads}, malloc {args.malloc}, "
        f"load average {load}, wall {time.perf_counter() - started:.0f} s, "
        f"CPU {time.process_time() - started_cpu:.0f} s"
    )


if __name__ == "__main__":
    main()
