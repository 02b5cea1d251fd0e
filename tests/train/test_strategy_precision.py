"""The Trainer's strategy, precision and model-selection objects, on their own."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.train import DataParallel, Monitor, Precision, SingleProcess
from mtlkit.train.distributed import Distributed
from mtlkit.train.selection import Selection
from mtlkit.weighting import get

CPU = torch.device("cpu")


def test_single_process_collectives_are_the_identity() -> None:
    single = SingleProcess()
    method = get("ew")
    losses = {"a": torch.tensor(1.0), "b": None}
    x = torch.arange(3.0)
    assert single.is_main and (single.rank, single.world_size) == (0, 1)
    assert single.wrap(method) is method
    assert single.globalize(losses, {"a": 4}) is losses
    assert single.share(x) is x and single.all_reduce(x) is x
    assert single.gather([1, 2]) == [1, 2]


def test_data_parallel_is_the_process_group_handle() -> None:
    assert Distributed is DataParallel
    assert DataParallel(0, 2).is_main and not DataParallel(1, 2).is_main
    assert torch.equal(DataParallel(1, 4).share(torch.tensor([4.0, 8.0])), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("amp", "dtype"),
    [(False, None), ("off", None), (True, torch.bfloat16), ("bf16", torch.bfloat16)],
)
def test_precision_from_amp_on_the_cpu(amp: bool | str, dtype: torch.dtype | None) -> None:
    precision = Precision.from_amp(amp, CPU)
    assert precision.dtype == dtype and precision.scaler is None
    assert precision.loss_scale() == 1.0 and precision.state_dict() is None


@pytest.mark.parametrize(
    ("amp", "match"), [("fp16", "not supported on the CPU"), ("x", "amp must")]
)
def test_precision_refuses_bad_amp(amp: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Precision.from_amp(amp, CPU)


def _stepped(precision: Precision, grad_clip: float | None) -> torch.Tensor:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = torch.optim.SGD([w], lr=1.0)
    (w.sum() * 10 * precision.loss_scale()).backward()  # gradient (10, 10) times the scale
    precision.step(optimizer, [w], grad_clip)
    return w.detach()


def test_precision_step_unscales_before_clipping() -> None:
    plain = _stepped(Precision(CPU), grad_clip=1.0)
    assert torch.allclose(plain, torch.tensor([3.0, 4.0]) - 10 / (200**0.5))  # norm clipped to 1
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaled = Precision(CPU, scaler=scaler)
    assert torch.equal(_stepped(scaled, grad_clip=1.0), plain)
    assert scaler.get_scale() == 2.0**8 and scaled.state_dict() is not None


def test_selection_keeps_the_best_epoch_and_stops_after_patience() -> None:
    model = torch.nn.Linear(1, 1)
    selection = Selection(Monitor("loss"), patience=2)
    assert selection.update(1.0, 1, model) is not None
    assert selection.update(2.0, 2, model) is None and not selection.should_stop
    assert selection.update(1.5, 3, model) is None and selection.should_stop
    assert selection.state_dict() == {"value": 1.0, "epoch": 1, "bad_epochs": 2}
    with pytest.raises(ConfigError, match="patience must be ≥ 1"):
        Selection(Monitor("loss"), patience=0)
