"""Streamed metrics: every registered metric, accumulated over random batches (and merged as
data-parallel ranks are), equals its whole-split function."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from mtlkit.tasks import METRICS, get_metric
from mtlkit.tasks.metrics import Metric, WholeSplit
from mtlkit.tasks.tagging import entity_f1_metric
from tests.tasks._detection import perfect_output

Sample = Callable[[torch.Generator], tuple[Tensor, Tensor]]
N = 60


def classes(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = torch.randint(0, 4, (N,), generator=g)
    target[torch.rand(N, generator=g) < 0.1] = -100
    return torch.randn(N, 4, generator=g), target


def binary(g: torch.Generator) -> tuple[Tensor, Tensor]:
    return torch.randn(N, 1, generator=g), torch.randint(0, 2, (N,), generator=g).float()


def regression(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = 1000 + torch.randn(N, 2, generator=g)  # a large mean: sums would cancel
    target[torch.rand(N, 2, generator=g) < 0.1] = math.nan
    return target + torch.randn(N, 2, generator=g), target


def multilabel(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = (torch.rand(N, 5, generator=g) < 0.3).float()
    target[torch.rand(N, 5, generator=g) < 0.1] = math.nan
    return torch.randn(N, 5, generator=g) + target.nan_to_num(), target


def tokens(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = torch.randint(0, 5, (N, 7), generator=g)  # CoNLL layout: O, B-1, I-1, B-2, I-2
    target[torch.rand(N, 7, generator=g) < 0.15] = -100
    return torch.randn(N, 7, 5, generator=g), target


def segmentation(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = torch.randint(0, 5, (N, 6, 6), generator=g)
    target[torch.rand(N, 6, 6, generator=g) < 0.1] = 255
    return torch.randn(N, 5, 6, 6, generator=g), target


def depth(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = torch.rand(N, 6, 6, generator=g) * 10
    target[torch.rand(N, 6, 6, generator=g) < 0.1] = 0.0
    return torch.rand(N, 1, 6, 6, generator=g) * 10, target


def normals(g: torch.Generator) -> tuple[Tensor, Tensor]:
    target = torch.nn.functional.normalize(torch.randn(N, 3, 6, 6, generator=g), dim=1)
    target[:, :, 0, 0] = 0.0
    return target + 0.5 * torch.randn(N, 3, 6, 6, generator=g), target


def detection(g: torch.Generator) -> tuple[Tensor, Tensor]:
    xy = torch.randint(0, 20, (N, 2, 2), generator=g).float()
    size = 6 + torch.randint(0, 6, (N, 2, 1), generator=g).float()
    boxes = torch.cat([xy, xy + size], dim=-1)  # (N, 2, 4): x1, y1, x2, y2
    cls = torch.randint(0, 3, (N, 2, 1), generator=g).float()
    cls[::3, 1] = -1.0  # padding rows
    target = torch.cat([boxes, cls], dim=-1)
    output = perfect_output(target, 3) + torch.randn(N, 10, 8, 8, generator=g)
    return output, target


SAMPLES: dict[str, list[Sample]] = {
    "accuracy": [classes, binary],
    "macro_f1": [classes, binary],
    "auroc": [classes, binary],
    "mae": [regression],
    "rmse": [regression],
    "r2": [regression],
    "macro_f1_multilabel": [multilabel],
    "multilabel_map": [multilabel],
    "token_accuracy": [tokens],
    "token_macro_f1": [tokens],
    "entity_f1": [tokens],
    "perplexity": [tokens],
    "miou": [segmentation],
    "pixel_accuracy": [segmentation],
    "depth_abs_err": [depth],
    "depth_rel_err": [depth],
    "normal_mean_angle": [normals],
    "normal_median_angle": [normals],
    "normal_within_11_25": [normals],
    "normal_within_22_5": [normals],
    "normal_within_30": [normals],
    "map": [detection],
    "map50": [detection],
}
# metrics that rank the whole split: they keep what they need of it (their docstrings say so)
KEEP_THE_SPLIT = {"auroc", "multilabel_map"}


def random_batches(
    output: Tensor, target: Tensor, g: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    cuts = sorted(torch.randperm(N - 1, generator=g)[:5].add(1).tolist())
    bounds = [0, *cuts, N]
    return [(output[a:b], target[a:b]) for a, b in itertools.pairwise(bounds)]


def assert_same(streamed: float, whole: float) -> None:
    if math.isnan(whole):
        assert math.isnan(streamed)
    else:
        assert streamed == pytest.approx(whole, rel=1e-12, abs=0)


def test_every_registered_metric_has_a_streaming_test() -> None:
    import mtlkit.tasks  # noqa: F401  (registers every family)

    assert set(METRICS.names()) <= set(SAMPLES)


@pytest.mark.parametrize(
    ("name", "sample"),
    [(name, sample) for name, samples in SAMPLES.items() for sample in samples],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_value_equals_the_whole_split(name: str, sample: Sample, seed: int) -> None:
    metric = get_metric(name)
    g = torch.Generator().manual_seed(seed)
    output, target = sample(g)
    whole = metric(output, target)
    assert not math.isnan(whole)  # the samples exercise the metric, not its empty case
    batches = random_batches(output, target, g)
    acc = metric.accumulate()
    for out, tgt in batches:
        acc.update(out, tgt)
    assert_same(acc.compute(), whole)
    # two "ranks", each with its block of batches, merged in rank order
    first, second = metric.accumulate(), metric.accumulate()
    half = len(batches) // 2
    for out, tgt in batches[:half]:
        first.update(out, tgt)
    for out, tgt in batches[half:]:
        second.update(out, tgt)
    first.merge(second)
    assert_same(first.compute(), whole)
    assert metric.streams == (name not in KEEP_THE_SPLIT)


def test_counting_metrics_stream_exactly() -> None:
    g = torch.Generator().manual_seed(3)
    output, target = segmentation(g)
    for name in ("miou", "pixel_accuracy"):
        acc = get_metric(name).accumulate()
        for out, tgt in random_batches(output, target, g):
            acc.update(out, tgt)
        assert acc.compute() == get_metric(name)(output, target)


def test_entity_f1_with_bound_tag_names_streams() -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    metric = entity_f1_metric(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    default = get_metric("entity_f1")
    g = torch.Generator().manual_seed(0)
    output, target = tokens(g)
    acc = metric.accumulate()
    for out, tgt in random_batches(output, target, g):
        acc.update(out, tgt)
    assert_same(acc.compute(), metric(output, target))
    assert labels and metric.streams and default.streams


def test_a_metric_without_accumulator_keeps_its_split() -> None:
    def spread(output: Tensor, target: Tensor) -> float:
        return float((output.reshape(target.shape) - target).std())

    metric = Metric("spread", spread, "min")
    acc = metric.accumulate()
    assert isinstance(acc, WholeSplit) and not metric.streams
    g = torch.Generator().manual_seed(0)
    output, target = torch.randn(N, generator=g), torch.randn(N, generator=g)
    for out, tgt in random_batches(output, target, g):
        acc.update(out, tgt)
    assert acc.compute() == spread(output, target)
    assert math.isnan(metric.accumulate().compute())  # nothing seen: NaN, not an error
