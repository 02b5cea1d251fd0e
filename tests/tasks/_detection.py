"""Helpers shared by the detection tests (``tests/tasks/test_detection.py`` and
``tests/nn/test_detection.py``). Not a test module: test modules import from here, never from
one another.
"""

from __future__ import annotations

import torch

from mtlkit.tasks.boxes import EXTRA_CHANNELS


def perfect_output(target: torch.Tensor, k: int, h: int = 8, w: int = 8, stride: int = 4):
    """A detection output that predicts each target box exactly at its centre location."""
    out = torch.full((target.shape[0], k + EXTRA_CHANNELS, h, w), -10.0)
    ys = (torch.arange(h) + 0.5) * stride
    xs = (torch.arange(w) + 0.5) * stride
    out[:, k + 5] = xs[None, :].expand(h, w)
    out[:, k + 6] = ys[:, None].expand(h, w)
    out[:, k : k + 4] = 1.0
    for b in range(target.shape[0]):
        for x1, y1, x2, y2, c in target[b].tolist():
            if c < 0:
                continue
            i, j = int((y1 + y2) / 2 // stride), int((x1 + x2) / 2 // stride)
            cx, cy = float(xs[j]), float(ys[i])
            out[b, int(c), i, j] = 10.0
            out[b, k : k + 4, i, j] = torch.tensor([cx - x1, cy - y1, x2 - cx, y2 - cy])
            out[b, k + 4, i, j] = 10.0
    return out
