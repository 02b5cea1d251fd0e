"""Sharding for data-parallel training: each rank's part of every batch and split.

- :class:`ShardedLoader` gives each rank a contiguous slice of every global batch of the same
  permutation (drawn from the global torch generator, seeded alike on every rank), so R ranks
  with batch b step through exactly the batches of one process with batch R·b;
- :func:`shard_split` gives each rank a contiguous block of an evaluation split (concatenated
  in rank order, the blocks give back the split; the Trainer gathers the outputs that way).

The process group and the collectives are in :mod:`mtlkit.train.distributed`; the proofs in
docs/distributed.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mtlkit.data.base import Batch, TensorSplit
from mtlkit.errors import DatasetError

__all__ = ["ShardedLoader", "shard_split"]


def shard_split(split: TensorSplit, rank: int, world_size: int) -> TensorSplit:
    """Rank ``rank``'s contiguous block of ``split`` (sizes differ by at most one), for
    evaluation: concatenating the blocks in rank order gives back the split."""
    _check_rank(rank, world_size)
    index = torch.tensor_split(torch.arange(len(split)), world_size)[rank]
    inputs, targets = split[index]
    return TensorSplit(inputs, targets, f"{split.name}[{rank}/{world_size}]")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DatasetError(
            f"sharding: option 'rank' must be in [0, world_size), got rank {rank} of {world_size}"
        )


class ShardedLoader:
    """This rank's part of every global batch of a :class:`TensorSplit`.

    A global batch has ``batch_size · world_size`` samples of one permutation (drawn from the
    global torch generator, like :class:`~mtlkit.data.TensorLoader`, so every rank draws the
    same one); rank r takes its r-th contiguous slice. The ranks' slices of step k are
    therefore exactly the batch k of a single-process TensorLoader with batch size
    ``batch_size · world_size``. A last global batch with fewer samples than ranks is skipped
    (no rank may have an empty batch); otherwise the last batch is split as evenly as possible.
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DatasetError(f"sharding: option 'batch_size' must be ≥ 1, got {batch_size}")
        _check_rank(rank, world_size)
        self.split = split
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, size = len(self.split), self.global_batch_size
        full, rest = divmod(n, size)
        return full + (1 if rest >= self.world_size and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        n, size = len(self.split), self.global_batch_size
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for step in range(len(self)):
            chunk = order[step * size : (step + 1) * size]
            yield self.split[torch.tensor_split(chunk, self.world_size)[self.rank]]
