"""Evaluation streams: the peak memory of evaluating a segmentation split grows with the
batch, not with the split. Each measurement runs in a fresh process (the growth of its peak
resident set size, VmHWM in /proc/self/status, over the evaluation only); a metric that keeps
the split (a user metric without an accumulator) is measured the same way, to show the
measurement sees the growth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import torch
from torch import nn
from mtlkit.tasks import Task
from mtlkit.tasks.metrics import Metric
from mtlkit.train.evaluation import Evaluator
from mtlkit.train.precision import Precision
from mtlkit.train.strategy import SingleProcess

batches, keep = int(sys.argv[1]), sys.argv[2] == "keep"
B, C, H, W = 8, 24, 128, 128  # one batch of outputs: 12.6 MB

class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1)
    def forward(self, x):
        return {"seg": self.conv(x)}

def data(n):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):  # made on the fly: the split itself is never in memory
        x = torch.randn(B, 3, H, W, generator=g)
        yield x, {"seg": torch.randint(0, C, (B, H, W), generator=g)}

task = Task("seg", "segmentation", num_outputs=C, metrics=["miou", "pixel_accuracy"])
if keep:  # a metric without accumulator keeps the split's outputs
    task.metric_fns["kept"] = Metric("kept", lambda o, t: float(o.mean()), "max")
torch.set_num_threads(1)
cpu = torch.device("cpu")
evaluator = Evaluator(Seg(), {"seg": task}, cpu, Precision.from_amp(False, cpu), SingleProcess())
def status(key):  # kB, from this process's own memory map (ru_maxrss would carry over the
    with open("/proc/self/status") as f:  # parent's peak across exec)
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

evaluator.evaluate(data(1))  # warm up allocator and kernels
try:  # reset the peak to the current size (Linux ≥ 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status("VmRSS")
metrics = evaluator.evaluate(data(batches))
peak = status("VmHWM")
print(json.dumps({"growth_mb": (peak - before) / 1024, "miou": metrics["seg"]["miou"]}))
"""


def peak_growth(batches: int, keep: bool = False) -> float:
    cmd = [sys.executable, "-c", SCRIPT, str(batches), "keep" if keep else "stream"]
    # glibc's allocator otherwise raises its mmap threshold after the first large free and
    # may keep freed batches in the heap, so the peak would measure its caching, not what is
    # alive: with a fixed threshold every batch-sized block is returned when freed
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["miou"] <= 1.0
    return float(result["growth_mb"])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kilobytes (Linux)")
def test_peak_memory_grows_with_the_batch_not_the_split() -> None:
    small, large = peak_growth(4), peak_growth(40)  # a split 10× larger: 50 MB → 500 MB
    # streamed: the larger split costs less than two of its 36 extra batches (one batch:
    # 12.6 MB; measured here: the same 27.5 MB of growth for both splits)
    assert large < small + 2 * 12.6, (small, large)
    # the same measurement sees a metric that keeps the split: it grows by ~36 batches
    kept = peak_growth(40, keep=True)
    assert kept > large + 300, (large, kept)
