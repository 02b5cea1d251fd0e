"""Sharded data-parallel training (FSDP2, ``fully_shard``) with exact gradient methods.

Under ``train.strategy: fsdp`` every rank keeps 1/R of each shared parameter (a DTensor
sharded on dim 0), of its gradient and of its optimiser state; the task heads stay replicated
(``fsdp``) or are sharded too (``fsdp_sharded_heads``). Data are sharded as under ``ddp``
(:class:`~mtlkit.data.sharding.ShardedLoader`) and the losses are globalized the same way
(:meth:`~mtlkit.train.strategy.DataParallel.globalize`: value L̄_i, gradient (n_r/N)·∇L_i^r).
A step on rank r (docs/distributed.md has the proof)::

    loss-based method   one backward of F(L̃): FSDP reduce-scatters the shared gradient (a
                        mean over ranks; × R gives Σ_r, the single-process ∇F(L̄)), the
                        replicated parameters get one sum all-reduce
    Gramian method      T backward passes (one per task, the graph retained): each gives this
                        rank's shard g_i^r of ∇L̄_i (reduce-scattered, × R); the partial Gram
                        G_r = S_r S_rᵀ of the T × P/R shard matrix S_r; one all-reduce of T²
                        numbers gives G = J̄J̄ᵀ; every rank computes the same α = f(G) and writes
                        Σ_i α_i g_i^r as its shard of the update

Methods that need the Jacobian itself (not only its Gram matrix) are refused with a
ConfigError that says to use ``ddp``; so are ``jacobian`` modes other than ``shared`` and
``update_every`` > 1 for gradient methods.

Each layer of the shared encoder is its own FSDP unit (:func:`shard_model`), so a task's
gradient is reduce-scattered layer by layer and never exists whole on a rank; the Gramian step
keeps one T × P/R buffer of shards (:meth:`ShardedWeighting._sharded_gram`).

Checkpoints are sharded (:meth:`FullyShardedDataParallel.save_checkpoint`): every rank writes
its shards of the model and the optimiser through ``torch.distributed.checkpoint`` as
safetensors (:func:`~mtlkit.train.checkpoint.save_sharded_checkpoint`), nothing gathered;
they load into a sharded model (DCP reads each rank's overlap of the saved chunks), under
``ddp``, or whole in one process. Model selection
(``best/``) still gathers the whole weights (:meth:`FullyShardedDataParallel.full_state`).
Evaluation runs its forward passes in lockstep over the ranks
(:class:`~mtlkit.train.evaluation.Lockstep`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from mtlkit.errors import ConfigError
from mtlkit.train.checkpoint import ShardedRef, resolve_sharded, save_sharded_checkpoint
from mtlkit.train.distributed import DistributedWeighting
from mtlkit.train.strategy import DataParallel
from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting.base import StepContext, StepRecord, Weighting
from mtlkit.weighting.gradient import GramianWeighting

__all__ = [
    "STRATEGIES",
    "FullyShardedDataParallel",
    "ShardedWeighting",
    "gramian_methods",
    "make_strategy",
    "shard_model",
]

#: the values of ``train.strategy``
STRATEGIES = ("ddp", "fsdp", "fsdp_sharded_heads")


def gramian_methods() -> list[str]:
    """The registered methods whose weights depend on the Gram matrix alone (they run under
    ``fsdp``), by name."""
    return sorted(
        n
        for n in WEIGHTINGS.names()
        if isinstance(c := WEIGHTINGS.lookup(n), type) and issubclass(c, GramianWeighting)
    )


def make_strategy(context: DataParallel | None, strategy: str) -> DataParallel | None:
    """The Trainer's strategy for ``train.strategy`` in the process group ``context``
    (None in a single process, where every strategy is the same run)."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"field 'train.strategy' must be one of {', '.join(STRATEGIES)}, got '{strategy}'"
        )
    if context is None or strategy == "ddp":
        return context
    return FullyShardedDataParallel(
        context.rank,
        context.world_size,
        context.local_rank,
        shard_heads=strategy == "fsdp_sharded_heads",
    )


# ---------------------------------------------------------------------------- the model


def _shard_units(model: nn.Module, shared: set[int], shard_heads: bool) -> Iterator[nn.Module]:
    """The subtrees to shard: each child whose parameters are all shared; with
    ``shard_heads``, also each module of the other children (a head per task)."""
    for child in model.children():
        params = [p for p in child.parameters() if p.requires_grad]
        if not params:
            continue
        if all(id(p) in shared for p in params):
            yield child
        elif shard_heads:
            parts = child.values() if isinstance(child, nn.ModuleDict) else child.children()
            units = list(parts) if isinstance(child, nn.ModuleDict | nn.ModuleList) else [child]
            yield from (u for u in units if any(p.requires_grad for p in u.parameters()))


def _layers(unit: nn.Module) -> list[nn.Module]:
    """The FSDP units of a subtree, innermost first: every module that holds trainable
    parameters itself (a linear layer, a norm, an embedding), then the subtree's root.

    One unit per layer is what keeps a whole-size gradient from ever existing on a rank:
    FSDP reduce-scatters a unit's gradient as soon as the backward pass leaves it, so a rank
    holds at most one layer's whole gradient (and, with the parameters resharded after the
    forward pass, one layer's whole weights) at a time."""
    inner = [
        m
        for m in unit.modules()
        if m is not unit and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    return [*reversed(inner), unit]  # reversed pre-order: every module after its children


def _load_whole_tensors(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: whole tensors of sharded parameters become this rank's
    shards (every rank holds the whole tensor, so no communication)."""
    current = module.state_dict()
    for key, value in list(state.items()):
        if not key.startswith(prefix):
            continue
        target = current.get(key[len(prefix) :])
        if isinstance(target, DTensor) and not isinstance(value, DTensor):
            state[key] = distribute_tensor(
                value.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None
            )


def shard_model(
    model: nn.Module, *, shard_heads: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """Shard ``model``'s shared parameters in place with ``fully_shard`` (FSDP2); the heads too
    when ``shard_heads``. Every shared parameter must end up sharded (a ConfigError names the
    first one that does not: it lives in a module that also holds task parameters).

    Returns the sharded shared parameters and all sharded parameters. Keep them: between a
    forward pass and the end of its backward passes, FSDP registers the gathered (whole)
    parameters of a root module in place of the shards, so ``model.parameters()`` may
    not show the shards then."""
    getter = getattr(model, "shared_parameters", None)
    if getter is None:
        raise ConfigError(
            f"train.strategy 'fsdp': the model {type(model).__name__} has no "
            "shared_parameters(); FSDP shards the shared encoder, so the model must declare it"
        )
    shared = {id(p) for p in getter()}
    for unit in list(_shard_units(model, shared, shard_heads)):
        for layer in _layers(unit):
            fully_shard(layer)
    names = {id(p): n for n, p in model.named_parameters()}
    whole = [names[id(p)] for p in getter() if p.requires_grad and not isinstance(p, DTensor)]
    if whole:
        raise ConfigError(
            f"train.strategy 'fsdp': shared parameter '{whole[0]}' could not be sharded (its "
            "module also holds task parameters); put the shared layers in their own module, or "
            "use train.strategy: ddp"
        )
    model.register_load_state_dict_pre_hook(_load_whole_tensors)
    every = [p for p in model.parameters() if isinstance(p, DTensor)]
    return [p for p in getter() if isinstance(p, DTensor)], every


def _whole(value: Any) -> Any:
    return value.full_tensor() if isinstance(value, DTensor) else value


# ---------------------------------------------------------------------------- the strategy


@dataclass(frozen=True)
class FullyShardedDataParallel(DataParallel):
    """Data-parallel training whose shared parameters are sharded over the ranks (FSDP2).

    Same collectives as :class:`~mtlkit.train.strategy.DataParallel`; the model is sharded
    when the Trainer broadcasts it, and the weighting method is wrapped in a
    :class:`ShardedWeighting`.
    """

    shard_heads: bool = False
    #: id(model) → (its sharded shared parameters, all its sharded parameters)
    sharded: dict[int, tuple[list[Tensor], list[Tensor]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def broadcast_model(self, model: nn.Module) -> None:
        """Rank 0's weights on every rank, then sharded (:func:`shard_model`)."""
        super().broadcast_model(model)
        self.sharded[id(model)] = shard_model(model, shard_heads=self.shard_heads)

    @property
    def lockstep(self) -> bool:
        """Evaluation runs the same number of forward passes on every rank: each sharded
        layer all-gathers its weights in the forward pass
        (:class:`~mtlkit.train.evaluation.Lockstep`)."""
        return True

    def sharded_parameters(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """``model``'s sharded shared parameters, and all its sharded parameters."""
        if id(model) not in self.sharded:
            raise ConfigError(
                f"train.strategy 'fsdp': the model {type(model).__name__} was not sharded; "
                "call strategy.broadcast_model(model) before training it"
            )
        return self.sharded[id(model)]

    def wrap(self, method: Weighting) -> Weighting:
        return method if isinstance(method, ShardedWeighting) else ShardedWeighting(method, self)

    def full_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The model's state with whole tensors (for model selection; every rank must call
        it: it all-gathers the shards, in the same order everywhere) and the optimiser's
        state as it is, sharded (:meth:`save_checkpoint` writes its shards)."""
        weights = {k: _whole(v).detach() for k, v in model.state_dict().items()}
        return weights, optimizer.state_dict()

    def save_checkpoint(
        self,
        run: Any,
        model: nn.Module,
        weights: Mapping[str, Tensor],
        state: Callable[[], dict[str, Any]],
    ) -> None:
        """A sharded checkpoint (:func:`~mtlkit.train.checkpoint.save_sharded_checkpoint`):
        every rank writes its own shards of the model and the optimiser through
        ``torch.distributed.checkpoint``; nothing is gathered. Every rank calls it."""
        folder = run.folder / "checkpoint" if run.folder is not None else None
        where = self.broadcast_object(None if folder is None else str(folder))
        save_sharded_checkpoint(
            None if where is None else Path(where),
            model,
            state(),
            is_main=self.is_main,
            barrier=self.barrier,
        )

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        """Load an optimiser state: tensors of a sharded checkpoint are read shard by shard
        (a collective), whole tensors are sharded like the parameters they belong to."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        owner: dict[str, Tensor] = {}
        for i, entry in state["state"].items():
            for value in entry.values():
                if isinstance(value, ShardedRef):
                    owner[value.key] = params[int(i)]
        state = resolve_sharded(state, lambda ref: torch.empty_like(owner[ref.key]))
        entries: dict[Any, Any] = {}
        for i, entry in state["state"].items():
            p = params[int(i)]
            entries[i] = {
                k: distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)
                if isinstance(p, DTensor)
                and isinstance(v, Tensor)
                and not isinstance(v, DTensor)
                and v.shape == p.shape
                else v
                for k, v in entry.items()
            }
        optimizer.load_state_dict({**state, "state": entries})

    def __repr__(self) -> str:
        return (
            f"FullyShardedDataParallel(rank={self.rank}, world_size={self.world_size}, "
            f"shard_heads={self.shard_heads})"
        )


# ---------------------------------------------------------------------------- the method


def _gradient_part(method: Weighting) -> Weighting | None:
    """The part of ``method`` that takes per-task gradients (itself, or a composition's
    aggregator); None for a loss-based method."""
    if method.jacobian_mode is None:
        return None
    aggregator = getattr(method, "aggregator", None)
    return aggregator if isinstance(aggregator, Weighting) else method


class ShardedWeighting(DistributedWeighting):
    """A weighting method run on a sharded model, exactly as one process runs it.

    Loss-based methods: one backward pass; the reduce-scattered shards (means over the ranks)
    are multiplied by R and the replicated parameters' gradients sum-all-reduced.
    :class:`~mtlkit.weighting.gradient.GramianWeighting` methods get the step-context hook
    ``sharded_gram`` (see the module docstring). Other gradient methods are refused.
    """

    context: FullyShardedDataParallel

    def __init__(self, method: Weighting, context: FullyShardedDataParallel) -> None:
        super().__init__(method, context)
        part = _gradient_part(method)
        if part is None:
            return
        if not isinstance(part, GramianWeighting):
            raise ConfigError(
                f"weighting '{part.name}' needs the task Jacobian itself, which no rank holds "
                "under train.strategy 'fsdp' (each rank keeps a shard of the shared gradients); "
                "use "
                f"train.strategy: ddp, or a Gram-matrix method: {', '.join(gramian_methods())}"
            )
        if part.jacobian != "shared" or part.update_every != 1:
            option = "jacobian" if part.jacobian != "shared" else "update_every"
            raise ConfigError(
                f"weighting '{part.name}': option '{option}' is not supported under train.strategy "
                "'fsdp' (it applies weights through the whole shared layers); leave it at its "
                "default, or use train.strategy: ddp"
            )

    @property
    def uses_representation(self) -> bool:
        return False  # the per-task passes go through the sharded encoder itself

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        model: nn.Module,
        *,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord:
        """The method's step, then the reductions that make every gradient global."""
        self._check_global(losses)
        _, sharded = self.context.sharded_parameters(model)
        self._written: set[int] = set()  # gradients the hook wrote (already global)
        record = Weighting.backward(self, losses, model, loss_scale=loss_scale)
        world = self.context.world_size
        for p in sharded:
            if p.grad is not None and id(p) not in self._written:
                p.grad = p.grad * world  # FSDP's reduce-scatter averages; Σ_r is the share sum
        ids = {id(p) for p in sharded}  # the backward passes are over: the shards are back
        self.context.sync_gradients(
            [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        )
        self._sync_own_parameters()
        return record

    def step(self, ctx: StepContext, /) -> StepRecord:
        return self.method.step(replace(ctx, sharded_gram=self._sharded_gram))

    def _sharded_gram(
        self, ctx: StepContext, weights_from_gram: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """One backward pass per task; Σ_r S_r S_rᵀ; α = f(G); Σ_i α_i g_i^r written.

        Memory: each backward pass leaves this rank's shard g_i^r (FSDP reduce-scatters it
        layer by layer, so no task's gradient is ever whole here); it is copied into row i of
        one T × P/R buffer S_r and freed. The partial Gram matrix is summed in float64 from
        float32 products of column blocks of S_r (no float64 copy of S_r), and the update
        is written into one gradient shard per parameter: beyond plain FSDP, T·P/R numbers.
        """
        shared = self.context.sharded_parameters(ctx.model)[0]
        earlier = {id(p): p.grad for p in shared}  # a regulariser's (averaged) share
        world, scale = self.context.world_size, ctx.loss_scale
        tasks = len(ctx.stacked)
        sizes = [_local(p).numel() for p in shared]
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        dtype = torch.promote_types(shared[0].dtype, torch.float32) if shared else torch.float32
        device = _local(shared[0]).device if shared else torch.device("cpu")
        rows = torch.zeros(tasks, offsets[-1], dtype=dtype, device=device)  # S_r
        holders: list[Tensor | None] = [None] * len(shared)  # a gradient DTensor per parameter
        for i in range(tasks):
            for p in shared:
                p.grad = None
            (ctx.stacked[i] * scale).backward(retain_graph=i < tasks - 1)
            for k, p in enumerate(shared):
                g = p.grad
                if g is not None:
                    rows[i, offsets[k] : offsets[k + 1]].copy_(_local(g).reshape(-1))
                    holders[k] = g  # the last one is kept to hold the update
            for p in shared:
                p.grad = None
        partial = torch.zeros(tasks, tasks, dtype=torch.float64, device=device)
        for lo in range(0, offsets[-1], _GRAM_BLOCK):
            block = rows[:, lo : lo + _GRAM_BLOCK]
            partial += (block @ block.T).double()
        partial *= (world / scale) ** 2  # the shards are means over the ranks, × loss scale
        gram = self.context.all_reduce(partial)  # this rank's columns of J̄ summed: J̄J̄ᵀ
        alpha = weights_from_gram(gram).detach()
        factors = (alpha.double() * world).to(dtype)  # × R: the shards are means over ranks
        for k, p in enumerate(shared):
            old = earlier[id(p)]
            holder = holders[k] if holders[k] is not None else old
            if holder is None:
                p.grad = None
                continue
            update = factors @ rows[:, offsets[k] : offsets[k + 1]]
            if old is not None:
                update += _local(old).reshape(-1) * world
            _local(holder).copy_(update.view_as(_local(holder)))
            p.grad = holder
            self._written.add(id(p))
        return alpha, gram


#: columns of S_r per float32 product summed into the float64 Gram matrix
_GRAM_BLOCK = 1 << 15


def _local(t: Tensor) -> Tensor:
    """This rank's part of ``t`` (a DTensor's local shard, or ``t``)."""
    return t.to_local() if isinstance(t, DTensor) else t
