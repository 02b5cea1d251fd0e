"""Training strategies: how a step's losses, gradients and results relate to other processes.

The Trainer chooses one strategy at construction and never asks again whether it is
distributed; everything that differs goes through this interface (as Lightning's strategies)::

                        SingleProcess           DataParallel (torchrun, R ranks)
    broadcast_model     nothing                 rank 0's weights on every rank
    wrap(method)        the method              a method that sees the global gradients
    globalize(losses)   the losses as they are  global values, this rank's gradient share
    share(term)         the term                term / R (a term every rank computes alike)
    all_reduce          the tensor              the sum (or mean) over the ranks
    gather              the items               every rank's items, in rank order
    barrier             nothing                 wait for every rank
    is_main             True                    rank 0 (the one that writes)

:class:`~mtlkit.train.fsdp.FullyShardedDataParallel` (``train.strategy: fsdp``) is a
``DataParallel`` that also shards the shared parameters; it overrides ``broadcast_model``
(then shards), ``wrap``, ``full_state``, ``save_checkpoint`` and ``load_optimizer_state``
(every rank writes and reads its own shards of a checkpoint).

:class:`DataParallel` is the process-group handle that
:func:`~mtlkit.train.distributed.init_distributed` returns (its former name ``Distributed``
still works); docs/distributed.md proves that its steps equal the single-process ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import Weighting

__all__ = ["DataParallel", "Distributed", "GlobalLosses", "SingleProcess", "Strategy"]

Losses = Mapping[str, Tensor | None]


class Strategy(ABC):
    """What the Trainer asks of the processes it runs in (see the module docstring)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and results."""
        return self.rank == 0

    @abstractmethod
    def broadcast_model(self, model: nn.Module) -> None:
        """Make every process start from the same weights."""

    @abstractmethod
    def wrap(self, method: Weighting) -> Weighting:
        """The weighting method as this strategy runs it."""

    @abstractmethod
    def globalize(self, losses: Losses, count: float | Mapping[str, float]) -> Losses:
        """The losses of the whole (global) batch; ``count`` is what each averages over here."""

    @abstractmethod
    def share(self, term: Tensor) -> Tensor:
        """This process's part of a term every process computes alike (a regulariser)."""

    @abstractmethod
    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``tensor`` reduced over the processes (``sum`` or ``mean``)."""

    @abstractmethod
    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every process's ``items``, in rank order."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every process gets here."""

    def full_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The model's and the optimiser's state dicts with whole tensors, for checkpoints
        and model selection. Every process calls it (a sharded strategy gathers here)."""
        return model.state_dict(), optimizer.state_dict()

    def save_checkpoint(
        self,
        run: Any,
        model: nn.Module,
        weights: Mapping[str, Tensor],
        state: Callable[[], dict[str, Any]],
    ) -> None:
        """Write the run's checkpoint: ``weights`` and ``state()`` (the main process writes
        whole tensors; a sharded strategy has every process write its shards)."""
        run.save_checkpoint(weights, state)

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        """Load an optimiser state that :meth:`full_state` gave (tensors of a sharded
        checkpoint are read whole)."""
        from mtlkit.train.checkpoint import resolve_sharded

        optimizer.load_state_dict(resolve_sharded(state))


class SingleProcess(Strategy):
    """One process: every collective is the identity."""

    rank, world_size = 0, 1

    def broadcast_model(self, model: nn.Module) -> None:
        return None

    def wrap(self, method: Weighting) -> Weighting:
        return method

    def globalize(self, losses: Losses, count: float | Mapping[str, float]) -> Losses:
        return losses

    def share(self, term: Tensor) -> Tensor:
        return term

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        return tensor

    def gather(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def barrier(self) -> None:
        return None

    def __repr__(self) -> str:
        return "SingleProcess()"


class GlobalLosses(dict[str, Tensor | None]):
    """Task losses made by :meth:`DataParallel.globalize`: each holds the global value and
    back-propagates this rank's share. ``shares`` maps each task to n_r / N."""

    shares: dict[str, float]


@dataclass(frozen=True)
class DataParallel(Strategy):
    """This process's place in a torchrun process group, and the collectives training needs.

    Every rank holds the whole model and a shard of each global batch
    (:class:`~mtlkit.data.sharding.ShardedLoader`); the wrapped weighting method makes
    every rank write the update a single process would write on the global batch.
    """

    rank: int
    world_size: int
    local_rank: int = 0

    # ------------------------------------------------------------------ collectives

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``tensor`` reduced over the ranks (``sum`` or ``mean``), in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= self.world_size
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (a run folder name, ...)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def check_same(self, value: Any, what: str) -> None:
        """A ConfigError on every rank unless ``value`` (picklable, comparable with ``==``) is
        the same on all ranks; ``what`` names it in the message. One gather of ``value``."""
        values = self.gather([value])
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if not differ:
            return
        first, other = values[0], values[differ[0]]
        fields = ""
        if isinstance(first, Mapping) and isinstance(other, Mapping):
            keys = sorted(
                str(k) for k in first.keys() | other.keys() if first.get(k) != other.get(k)
            )
            fields = f" (fields that differ: {', '.join(keys)})"
        raise ConfigError(
            f"distributed: {what} differs between rank 0 and rank(s) "
            f"{', '.join(map(str, differ))}{fields}; build every rank from the same config and seed"
        )

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

    def broadcast_model(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (as DDP does at start)."""
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    # ------------------------------------------------------------------ training

    def share(self, term: Tensor) -> Tensor:
        """A term every rank computes alike, divided by R: the sum all-reduce of the
        gradients then counts it once."""
        return term / self.world_size

    def globalize(
        self, losses: Mapping[str, Tensor | None], count: float | Mapping[str, float]
    ) -> GlobalLosses:
        """Each task's loss over the global batch, differentiable into this rank's share.

        ``count`` is the number of samples this rank's mean losses average over (a number, or
        one per task). With N_i = Σ_r n_i^r, the returned loss of task i has the value
        L̄_i = Σ_r n_i^r L_i^r / N_i (identical on every rank) and the gradient
        (n_i^r / N_i) ∇L_i^r. A task with no samples here (``None``, or a count of 0) but some
        elsewhere becomes a constant L̄_i; a task with no samples on any rank stays ``None``.
        """
        names = list(losses)
        counts = [
            0.0 if losses[t] is None else float(count[t] if isinstance(count, Mapping) else count)
            for t in names
        ]
        present = [t for t in names if losses[t] is not None]
        ref = losses[present[0]] if present else None
        device = ref.device if ref is not None else torch.device("cpu")
        buffer = torch.zeros(2 * len(names), dtype=torch.float64, device=device)
        for i, t in enumerate(names):
            loss = losses[t]
            if loss is not None and counts[i] > 0:
                buffer[i] = counts[i] * loss.detach().double()
                buffer[len(names) + i] = counts[i]
        self.all_reduce(buffer)
        out = GlobalLosses()
        out.shares = {}
        for i, t in enumerate(names):
            total = float(buffer[len(names) + i])
            if total == 0:
                out[t] = None
                continue
            value = buffer[i] / total
            loss = losses[t]
            if loss is None or counts[i] == 0:
                out[t] = value.to(ref.dtype if ref is not None else torch.float32)
                out.shares[t] = 0.0
                continue
            share = counts[i] / total
            # value exactly L̄ (x − x = 0), gradient share · ∇L^r
            out[t] = value.to(loss.dtype) + share * (loss - loss.detach())
            out.shares[t] = share
        return out

    def wrap(self, method: Weighting) -> Weighting:
        """``method`` made to combine the global per-task gradients (a
        :class:`~mtlkit.train.distributed.DistributedWeighting`)."""
        from mtlkit.train.distributed import DistributedWeighting  # it builds on this class

        return (
            method
            if isinstance(method, DistributedWeighting)
            else DistributedWeighting(method, self)
        )

    def sync_gradients(self, params: Sequence[Tensor], op: str = "sum") -> None:
        """All-reduce the ``.grad`` of ``params`` in one flat buffer.

        A parameter whose gradient is None on every rank stays None; one that has a gradient on
        some rank gets the reduced gradient everywhere (zeros count for the others).
        """
        if not params:
            return
        dtype = params[0].dtype
        for p in params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        device = params[0].device
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p in params
        ]
        flags = torch.tensor(
            [float(p.grad is not None) for p in params], dtype=dtype, device=device
        )
        flat = torch.cat([*parts, flags])
        self.all_reduce(flat, op)
        offset = 0
        sizes = [p.numel() for p in params]
        present = (flat[sum(sizes) :] > 0).tolist()  # one read-back for every parameter
        for p, n, has in zip(params, sizes, present, strict=True):
            if has:
                # a view of the reduced buffer (fresh each call; disjoint per parameter), as
                # DDP's gradient_as_bucket_view: no copy unless the dtype differs
                p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    # ------------------------------------------------------------------ evaluation

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order (any picklable values)."""
        boxes: list[Any] = [None] * self.world_size
        dist.all_gather_object(boxes, list(items))
        return [item for box in boxes for item in box]


#: the name :class:`DataParallel` had before strategies (``init_distributed`` returns one)
Distributed = DataParallel
