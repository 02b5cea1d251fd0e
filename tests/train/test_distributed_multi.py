"""Multi-input data under torchrun, in one process: rank shards against the 1-process batches.

The claim (docs/distributed.md, "Multi-input data"): with R ranks and batch b per rank, the
ranks' slices of every task's batch at step k, joined in rank order, are the task's batch at
step k of one process with batch R·b; and the task each step draws (``single`` mode) does not
depend on the rank. Every rank seeds the global generator alike, which a test reproduces by
seeding it before iterating each rank's loader. The 2-process run of the same data is in
``test_distributed.py`` (``test_two_gloo_ranks``); the data both use is in ``_multi_input.py``.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit.data.multi import MultiInputData, MultiTaskLoader, TaskBatches
from mtlkit.data.samplers import TASK_SAMPLERS
from mtlkit.errors import ConfigError, DatasetError
from tests.train._multi_input import PER_RANK, SIZES, WORLD, multi_data, task_split


def _steps(loader: MultiTaskLoader, epochs: int, seed: int = 3) -> list[TaskBatches]:
    """Every step of ``epochs`` epochs, from a global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    steps = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        steps.extend(loader)
    return steps


def _rank_loaders(data: MultiInputData) -> list[MultiTaskLoader]:
    loaders = [data.loader("train", PER_RANK, rank=r, world_size=WORLD) for r in range(WORLD)]
    assert all(isinstance(x, MultiTaskLoader) for x in loaders)
    return loaders  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("step_mode", "sampler"),
    [("mixed", "proportional"), ("single", "proportional"), ("single", "sequential")],
)
def test_rank_shards_of_every_step_join_into_the_single_process_batch(
    step_mode: str, sampler: str
) -> None:
    data = multi_data(step_mode, sampler)
    single = _steps(data.loader("train", WORLD * PER_RANK), epochs=2)  # type: ignore[arg-type]
    shards = [_steps(loader, epochs=2) for loader in _rank_loaders(data)]
    per_epoch = 6 if step_mode == "mixed" else 6 + 3  # max_i b_i or Σ_i b_i global batches
    assert len(single) == 2 * per_epoch
    assert all(len(s) == len(single) for s in shards)
    seen = dict.fromkeys(SIZES, 0)
    for k, batch in enumerate(single):
        for rank in range(WORLD):
            assert list(shards[rank][k]) == list(batch), f"step {k}, rank {rank}: other tasks"
        for task, (x, y) in batch.items():
            parts = [shards[r][k][task] for r in range(WORLD)]
            assert torch.equal(torch.cat([p[0] for p in parts]), x), f"step {k}, task {task}"
            assert torch.equal(torch.cat([p[1][task] for p in parts]), y[task])
            sizes = [len(p[0]) for p in parts]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, sizes
            seen[task] += len(x)
    if step_mode == "single" and sampler == "sequential":  # each example once per epoch
        assert seen == {t: 2 * n for t, n in SIZES.items()}
    if step_mode == "mixed":  # every task every step; the largest one seen once per epoch
        assert seen["cls"] == 2 * SIZES["cls"]


@pytest.mark.parametrize("sampler", sorted(TASK_SAMPLERS.names()))
def test_every_sampler_draws_the_same_tasks_on_every_rank(sampler: str) -> None:
    data = multi_data("single", sampler, epochs=3)
    single = data.loader("train", WORLD * PER_RANK)
    ranks = _rank_loaders(data)
    sequences = [[next(iter(s)) for s in _steps(x, epochs=3)] for x in [single, *ranks]]  # type: ignore[list-item]
    assert sequences[1] == sequences[2] == sequences[0]
    assert len(set(sequences[0])) == 2  # both tasks are drawn: the check is not vacuous
    # another global generator state changes the batches, not the draws (own generator)
    assert [next(iter(s)) for s in _steps(ranks[1], epochs=3, seed=99)] == sequences[0]
    # the schedule that the run compares across ranks is the same too, and the 1-process one
    one, *others = (x.schedule() for x in [single, *ranks])  # type: ignore[union-attr]
    assert others[0] == others[1]
    assert {k: v for k, v in one.items() if k != "world_size"} == {
        k: v for k, v in others[0].items() if k != "world_size"
    }


def test_the_schedule_tells_apart_what_changes_the_draws() -> None:
    base = multi_data("single", "temperature").loader("train", PER_RANK, rank=0, world_size=2)
    other_seed = multi_data("single", "temperature", seed=1).loader(
        "train", PER_RANK, rank=1, world_size=2
    )
    other_batch = multi_data("single", "temperature").loader("train", 3, rank=1, world_size=2)
    a, b, c = (x.schedule() for x in (base, other_seed, other_batch))  # type: ignore[union-attr]
    assert {k for k in a if a[k] != b[k]} == {"sampler", "generator"}
    assert {"global_batch", "batches", "steps_per_epoch"} <= {k for k in a if a[k] != c[k]}
    base.set_epoch(1)
    assert base.schedule()["epoch"] == 1 != a["epoch"]  # type: ignore[union-attr]


def test_evaluation_blocks_of_each_task_concatenate_to_its_split() -> None:
    data = multi_data()
    for name in ("val", "test"):
        parts = [data.loader(name, 4, rank=r, world_size=WORLD) for r in range(WORLD)]
        for task in SIZES:
            blocks = [torch.cat([item[task][0] for item in part if task in item]) for part in parts]
            whole = getattr(data, name)[task].inputs
            assert torch.equal(torch.cat(blocks), whole), f"{name}/{task}"  # rank order
            assert [len(b) for b in blocks] == [len(whole) - len(whole) // 2, len(whole) // 2]


def test_bad_sharding_of_multi_input_data_is_named() -> None:
    splits = {"cls": task_split("cls", 8, 0)}
    with pytest.raises(ConfigError, match="option 'rank' must be in"):
        MultiTaskLoader(splits, 4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="option 'rank' must be in"):
        MultiTaskLoader(splits, 4, rank=0, world_size=0)
    with pytest.raises(ConfigError, match="option 'world_size' must be an integer"):
        MultiTaskLoader(splits, 4, rank=0, world_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"task 'reg'.*fewer examples than the 2 ranks"):
        MultiTaskLoader({**splits, "reg": task_split("reg", 1, 1)}, 4, rank=0, world_size=2)
