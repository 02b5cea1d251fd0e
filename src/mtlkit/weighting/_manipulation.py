"""Helpers shared by the gradient-manipulation methods: option checks and the simplex projection."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError


def check_seed(method: str, seed: Any) -> int:
    """``seed`` as an int ≥ 0, or a ConfigError naming ``method`` and the option."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{method}: option 'seed' must be an integer ≥ 0, got {seed!r}")
    return seed


def check_real(
    method: str,
    option: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    number = float(value) if not bad else math.nan
    bad = bad or not math.isfinite(number)
    if not bad and low is not None:
        bad = number <= low if low_open else number < low
    if not bad and high is not None:
        bad = number > high
    if bad:
        lo = "" if low is None else (f"> {low:g}" if low_open else f"≥ {low:g}")
        hi = "" if high is None else f"≤ {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b) or "finite"
        raise ConfigError(f"{method}: option '{option}' must be a number {bounds}, got {value!r}")
    return number


def project_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of ``v`` onto the probability simplex {x ≥ 0, Σ x = 1}.

    The sort-based algorithm of Held et al. (1974) (see Duchi et al. 2008, ICML, "Efficient
    projections onto the l1-ball for learning in high dimensions"): find the largest k with
    u_k − (Σ_{j≤k} u_j − 1)/k > 0 over the sorted values u, then shift and clip.
    """
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=0) - 1.0
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / k > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)
