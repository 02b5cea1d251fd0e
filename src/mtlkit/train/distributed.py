"""Distributed data-parallel training under torchrun, with gradient methods kept exact.

Each of R processes (ranks) holds a full copy of the model and a shard of every global batch.
A step on rank r, with n_r of the N samples of the global batch (docs/distributed.md has the
proofs)::

    losses  = ctx.globalize(task_losses, n_r)   # value L̄_i on every rank, gradient (n_r/N)·∇L_i^r
    record  = method.backward(losses, model)     # method = ctx.wrap(method)
    optimizer.step()                             # every rank holds the same gradients

- :meth:`DataParallel.globalize` all-reduces the detached loss values: L̄_i = Σ_r n_r L_i^r / N is
  the loss a single process would compute on the whole global batch. The returned tensor has
  that value and back-propagates into this rank's graph with the factor n_r/N, so a sum
  all-reduce of gradients afterwards gives exactly the single-process gradient of any
  (possibly non-linear) objective F(L̄) a loss-based method builds.
- :class:`DistributedWeighting` wraps any method. Gradient-based methods get a hook in their
  step context (:attr:`StepContext.reduce_jacobian`) that sum-all-reduces the T × P Jacobian
  of the shares, J̄ = Σ_r (n_r/N) J_r, before the method sees it: every rank then aggregates the
  same J̄ with the same state and random generators, and writes the same update. The remaining
  gradients (task-specific parameters, and shared ones when the method's update was applied
  through a backward pass) are local shares and get one sum all-reduce of a flat buffer.
  The method's own parameters (uncertainty weighting's log-variances) get identical gradients
  on every rank, and are averaged so that rounding never lets them drift.
- :class:`~mtlkit.data.sharding.ShardedLoader` gives each rank a contiguous slice of every
  global batch of the same permutation (drawn from the global torch generator, seeded alike on
  every rank); :func:`~mtlkit.data.sharding.shard_split` gives each rank a contiguous block of
  an evaluation split, and :meth:`DataParallel.gather` puts the outputs back together in the
  single-process order.
  Multi-input data (:class:`~mtlkit.data.multi.MultiTaskLoader` with ``rank``/``world_size``)
  shards each task's batch of a step the same way; its task sampler draws from a generator
  seeded by (seed, epoch) only, so all ranks draw the same task, and
  :meth:`DataParallel.check_same` verifies at start that the ranks' schedules agree.

A process group is started from torchrun's environment by :func:`init_distributed` (or by the
``mtlkit train`` command when it finds ``WORLD_SIZE`` > 1), with a timeout on every collective
so that a rank that dies makes the others fail with an error instead of waiting forever. It
returns the process-group handle :class:`~mtlkit.train.strategy.DataParallel` (also named
``Distributed``): the collectives, and the Trainer's data-parallel strategy (train/strategy.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Self

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.train.strategy import DataParallel, Distributed, GlobalLosses
from mtlkit.weighting.base import StepContext, StepRecord, Weighting, Wrapper
from mtlkit.weighting.gradient import GradientWeighting, split_parameters, task_jacobian

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DataParallel",
    "Distributed",
    "DistributedWeighting",
    "GlobalLosses",
    "StopTogether",
    "collective_timeout",
    "current",
    "failure_line",
    "init_distributed",
    "is_collective_failure",
    "launched_by_torchrun",
    "teardown",
]

#: seconds a collective may wait for the other ranks before it raises (env MTLKIT_DIST_TIMEOUT)
DEFAULT_TIMEOUT_S = 600.0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is None:
        raw = os.environ.get("MTLKIT_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ConfigError(
                f"distributed: MTLKIT_DIST_TIMEOUT must be a number of seconds, got '{raw}'"
            ) from None
    if not timeout_s > 0:
        raise ConfigError(f"distributed: option 'timeout_s' must be > 0, got {timeout_s}")
    return float(timeout_s)


def init_distributed(backend: str | None = None, *, timeout_s: float | None = None) -> Distributed:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    ``backend``: ``nccl`` when CUDA is available, else ``gloo``. ``timeout_s`` bounds every
    collective (default ``MTLKIT_DIST_TIMEOUT`` or 600 s). With CUDA, this rank uses the GPU
    ``LOCAL_RANK``. Already initialised: the existing group is used.
    """
    if dist.is_initialized():
        context = current()
        assert context is not None
        return context
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise ConfigError(
            f"distributed: environment variable(s) {', '.join(missing)} are not set; start the "
            "job with torchrun (torchrun --nproc_per_node N -m mtlkit train CONFIG)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl", "mpi"):
        raise ConfigError(
            f"distributed: option 'backend' must be gloo, nccl or mpi, got '{backend}'"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=_timeout(timeout_s)))
    context = current()
    assert context is not None
    return context


def collective_timeout() -> float:
    """The seconds a collective waits: the group's setting (``MTLKIT_DIST_TIMEOUT`` or 600)."""
    return _timeout(None)


# ---------------------------------------------------------------------------- failures

#: what every line mtlkit prints about a distributed failure starts with: "mtlkit: rank N: "
LINE_PREFIX = "mtlkit: rank"

#: words of the errors a collective raises when a peer is gone or silent (gloo and NCCL)
_PEER_WORDS = (
    "timed out",
    "timeout",
    "connection closed",
    "connection reset",
    "connection refused",
    "broken pipe",
    "peer",
    "gloo",
    "nccl",
)


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank died or hung (not a
    bug of this rank): torch's ``DistError`` family, or gloo's and NCCL's runtime errors."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(word in text for word in _PEER_WORDS)


def failure_line(rank: int, what: str) -> str:
    """The one line a rank prints when the job stops: ``mtlkit: rank R: <what>``."""
    return f"{LINE_PREFIX} {rank}: {' '.join(what.split())}"


class StopTogether:
    """Ends every rank when one fails: a watchdog thread per rank, talking through the job's
    rendezvous store (torchrun's, at ``MASTER_ADDR:MASTER_PORT``), not through the collectives.

    A rank that fails calls :meth:`abort` with what failed; every other rank's watchdog reads it
    within ``interval`` seconds, prints one line naming the failed rank and exits with status 1
    (also while it is hung outside a collective, or busy computing). A watchdog that loses the
    store (the node that hosts it was lost) does the same. So after a lost or hung rank, every
    rank ends within ``MTLKIT_DIST_TIMEOUT`` (the collective that waits for it raises) plus a
    few seconds, and torchrun's agents, which see their workers exit, end too.
    """

    def __init__(self, context: Distributed, *, interval: float = 0.5) -> None:
        self.rank = context.rank
        self.interval = interval
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.key = f"mtlkit/stop/{run}/{restart}"
        self.where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        self._stop = threading.Event()
        self._store: dist.Store | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StopTogether:
        """Connect to the store and start watching (a store that cannot be reached: no
        watchdog; the collectives' timeout still ends the job)."""
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if host is None or port is None:
            return self
        try:
            self._store = dist.TCPStore(
                host, int(port), is_master=False, timeout=timedelta(seconds=10)
            )
        except (RuntimeError, ValueError):
            return self
        self._thread = threading.Thread(target=self._watch, name="mtlkit-stop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the run ended, or this rank reports its own failure)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def abort(self, what: str) -> None:
        """Tell every other rank to stop because this one failed with ``what`` (best effort)."""
        self.stop()
        if self._store is not None:
            # the store is gone too: the collectives' timeout ends the others
            with contextlib.suppress(RuntimeError, ValueError):
                self._store.set(self.key, f"{self.rank}|{what}")

    def _watch(self) -> None:
        assert self._store is not None
        while not self._stop.wait(self.interval):
            try:
                stopped = self._store.check([self.key])
                reason = self._store.get(self.key).decode() if stopped else None
            except (RuntimeError, ValueError) as err:
                if self._stop.wait(2.0):  # the job ended normally meanwhile
                    return
                self._exit(
                    f"training stopped: lost the job's rendezvous store at {self.where} "
                    f"(the node that hosts it was lost?; {type(err).__name__}); "
                    "every rank stops"
                )
            else:
                if reason is not None and not self._stop.is_set():
                    other, _, what = reason.partition("|")
                    self._exit(f"training stopped: rank {other} failed ({what}); every rank stops")

    def _exit(self, what: str) -> None:
        print(failure_line(self.rank, what), file=sys.stderr, flush=True)
        os._exit(1)


def teardown() -> None:
    """Leave the process group (nothing to do when none was started)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Distributed | None:
    """The running process group as a :class:`Distributed`, or None in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


# ---------------------------------------------------------------------------- the wrapper

#: the Jacobian bytes per asynchronous all-reduce (DDP's default bucket size)
BUCKET_BYTES = 25 * 2**20
#: the most chunks of rows the Jacobian is taken in (each traverses the graph once more)
MAX_CHUNKS = 4


def _plain_gradient_method(method: Weighting) -> bool:
    """Whether ``method`` runs :class:`GradientWeighting`'s own step (whose task-specific
    parameters get ∇ Σ_i L_i, so that the wrapper may compute it) in mode shared or
    last_shared."""
    return (
        isinstance(method, GradientWeighting)
        and type(method).step is GradientWeighting.step
        and method.jacobian_mode in ("shared", "last_shared")
    )


def _with_gradients(params: Sequence[Tensor], shared: Sequence[Tensor]) -> list[Tensor]:
    """``params`` less the ``shared`` ones that have no gradient on any rank (one all-reduce of
    a flag per shared parameter): after a method wrote the global update itself, the shared
    parameters hold only local terms written before it (a regulariser's), usually none, and
    all-reducing their P zeros would double the step's traffic."""
    if not shared:
        return list(params)
    flags = torch.tensor(
        [float(p.grad is not None) for p in shared], dtype=torch.float32, device=shared[0].device
    )
    dist.all_reduce(flags)
    empty = {id(p) for p, f in zip(shared, flags.tolist(), strict=True) if f == 0}
    return [p for p in params if id(p) not in empty]


@dataclass
class _PendingSum:
    """An asynchronous sum all-reduce of parameters' gradients in one flat buffer, with the
    same rule as :meth:`DataParallel.sync_gradients`: a gradient that is None on every rank
    stays None."""

    params: Sequence[Tensor]
    flat: Tensor
    work: Any

    @classmethod
    def start(cls, params: Sequence[Tensor]) -> _PendingSum:
        dtype = params[0].dtype
        for p in params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p in params
        ]
        flags = torch.tensor(
            [float(p.grad is not None) for p in params], dtype=dtype, device=params[0].device
        )
        flat = torch.cat([*parts, flags])
        return cls(params, flat, dist.all_reduce(flat, async_op=True))

    def finish(self) -> None:
        self.work.wait()
        sizes = [p.numel() for p in self.params]
        flags = self.flat[sum(sizes) :]
        offset = 0
        for i, (p, n) in enumerate(zip(self.params, sizes, strict=True)):
            if flags[i] > 0:
                p.grad = self.flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n


class DistributedWeighting(Wrapper):
    """A weighting method that sees the global per-task gradients on every rank.

    Takes :class:`GlobalLosses` (from :meth:`Distributed.globalize`). A gradient-based method
    (or the aggregator of a :class:`~mtlkit.weighting.compose.Composed`) steps with a context
    whose ``reduce_jacobian`` hook sum-all-reduces the Jacobian, J̄ = Σ_r (n_r/N) J_r, which
    equals the Jacobian a single process computes on the global batch; every other gradient is
    reduced once after the backward pass. ``jacobian="representation"`` is refused: the
    representation belongs to this rank's samples only, so its per-task gradients are not a
    shared T × P matrix. Checkpoints hold the wrapped method's state, so they load in a single
    process too.
    """

    def __init__(
        self,
        method: Weighting,
        context: Distributed,
        *,
        overlap: bool = True,
        bucket_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.context = context
        #: overlap the reductions with the backward passes (see :meth:`step`)
        self.overlap = overlap
        if bucket_bytes is not None and bucket_bytes < 1:
            raise ConfigError(f"distributed: option 'bucket_bytes' must be ≥ 1, got {bucket_bytes}")
        #: Jacobian bytes per row chunk; None: BUCKET_BYTES with NCCL, one chunk otherwise
        self.bucket_bytes = bucket_bytes
        self.chunks_last_step = 0  # row chunks of the last overlapped Jacobian
        self._own: list[Tensor] = []  # task-specific parameters this wrapper reduces itself
        self._own_pending: _PendingSum | None = None
        self._own_ctx: StepContext | None = None
        #: steps whose task-specific gradients were reduced while other work ran
        self.overlapped_steps = 0
        if method.jacobian_mode == "representation":
            raise ConfigError(
                f"{method}: option 'jacobian' 'representation' cannot be used in distributed "
                "training (each rank's representation covers its own samples only); "
                "use 'shared' or 'last_shared'"
            )
        self._global_update = False
        self.stateful = method.stateful  # type: ignore[misc]

    def _reduce_jacobian(self, jacobian: Tensor) -> Tensor:
        """The hook of the step context without overlap: this rank's Jacobian share → the
        global Jacobian, one blocking all-reduce."""
        jacobian = self.context.all_reduce(jacobian.contiguous())
        if self.method.jacobian_mode == "shared":
            self._global_update = True  # the method writes the global update itself
        return jacobian

    def _global_jacobian(
        self,
        losses: Tensor,
        inputs: Sequence[Tensor],
        representation: Tensor | None,
        head_rows: Tensor | None,
    ) -> Tensor:
        """The global Jacobian, with its all-reduce overlapped (``StepContext.global_jacobian``).

        The T rows are taken in chunks, each by one vectorised backward pass, and each chunk's
        all-reduce starts as soon as its rows exist, so it runs during the next chunk's
        backward pass; the chunks are as many as J has buckets of ``bucket_bytes`` (DDP's
        25 MiB), at most ``MAX_CHUNKS`` (each chunk traverses the graph once more, with fewer
        rows). By default only with NCCL: gloo's all-reduce runs on the same CPU cores as the
        backward pass, so there it would cost the extra traversals and hide nothing
        (docs/distributed.md, "Benchmark"). After the last chunk, while the all-reduces
        finish, this rank back-propagates Σ_i L_i into the task-specific parameters (when
        :meth:`step` took them over) and starts their all-reduce, which completes during the
        method's solve. The rows of J are independent, so the chunks give J's rows exactly
        (row i is ∇L_i either way)."""
        t = losses.shape[0]
        bucket = self.bucket_bytes
        if bucket is None:  # gloo reduces on the CPU cores the backward pass runs on
            bucket = BUCKET_BYTES if dist.get_backend() == "nccl" else 2**62
        row_bytes = sum(x.numel() for x in inputs) * 4
        chunks = min(t, MAX_CHUNKS, max(1, -(-t * row_bytes // bucket)))
        size = -(-t // chunks)
        pieces: list[Tensor] = []
        works = []
        for i in range(0, t, size):
            piece = task_jacobian(
                losses[i : i + size],
                inputs,
                representation=representation,
                head_rows=None if head_rows is None else head_rows[i : i + size],
            ).contiguous()
            works.append(dist.all_reduce(piece, async_op=True))
            pieces.append(piece)
        self._own_backward()
        for work in works:
            work.wait()
        if self.method.jacobian_mode == "shared":
            self._global_update = True  # the method writes the global update itself
        self.chunks_last_step = len(pieces)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    @property
    def wrapped(self) -> Weighting:
        return self.method

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        model: nn.Module,
        *,
        representation: Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> StepRecord:
        """The wrapped method's step (absent tasks handled as everywhere) between the
        gradient reductions."""
        self._check_global(losses)
        params = [p for p in model.parameters() if p.requires_grad]
        shared: list[Tensor] = []
        if self.method.jacobian_mode is not None:
            getter = getattr(model, "shared_parameters", None)
            shared = [p for p in getter() if p.requires_grad] if getter is not None else []
        before = {id(p): p.grad for p in shared}  # local shares written earlier (regularisers)
        for p in shared:
            p.grad = None
        self._global_update = False
        record = super().backward(
            losses, model, representation=representation, loss_scale=loss_scale
        )
        if self._own_ctx is not None:  # overlap chosen, but the method took no Jacobian
            self._own_backward()
        if self._own_pending is not None:
            self._own_pending.finish()
            done = {id(p) for p in self._own}
            params = [p for p in params if id(p) not in done]
        self._own, self._own_pending = [], None
        if self._global_update:
            update = {id(p): p.grad for p in shared}
            for p in shared:
                p.grad = before[id(p)]
            self.context.sync_gradients(_with_gradients(params, shared))
            for p in shared:
                g = update[id(p)]
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        else:
            for p in shared:
                old = before[id(p)]
                if old is not None:
                    p.grad = old if p.grad is None else p.grad + old
            self.context.sync_gradients(params)
        self._sync_own_parameters()
        return record

    def _check_global(self, losses: Mapping[str, Tensor | None]) -> None:
        """An error unless ``losses`` came through the strategy's ``globalize``."""
        if not isinstance(losses, GlobalLosses):
            raise TaskDataError(
                f"distributed {self.method}: pass the losses through Distributed.globalize "
                "first (they must hold the global values)"
            )

    def _sync_own_parameters(self) -> None:
        """Average the method's own parameters' gradients (equal on every rank, up to
        rounding, which must never let them drift apart)."""
        own = [p for p in self.method.parameters() if p.requires_grad]
        self.context.sync_gradients(own, op="mean")

    def step(self, ctx: StepContext, /) -> StepRecord:
        """The wrapped method's step, in a context that reduces its Jacobian across ranks.

        With ``overlap`` and a plain gradient method (no composition, no step of its own), the
        task-specific parameters are taken out of the method's hands: their gradient, the
        gradient of Σ_i L_i at the loss scale whatever the method (gradient.py), is computed
        here, while the Jacobian's all-reduce runs (:meth:`_global_jacobian`), or before the
        method's step when it may reuse cached weights and take no Jacobian (``update_every``
        > 1: then their all-reduce runs during the method's backward). Same values, same
        sums: the update is the one without overlap (tested)."""
        self._own, self._own_pending, self._own_ctx = [], None, None
        if self.overlap and _plain_gradient_method(self.method):
            _, own = split_parameters(ctx, self.method)
            if own:
                self._own = own
                self._own_ctx = ctx
                ctx = replace(ctx, task_params=())
                if getattr(self.method, "update_every", 1) > 1:
                    self._own_backward()
        if self.overlap:
            ctx = replace(ctx, global_jacobian=self._global_jacobian)
        return self.method.step(replace(ctx, reduce_jacobian=self._reduce_jacobian))

    def _own_backward(self) -> None:
        """Σ_i L_i back-propagated into the task-specific parameters, and their all-reduce
        started (once per step)."""
        ctx, self._own_ctx = self._own_ctx, None
        if ctx is None:
            return
        (ctx.stacked.sum() * ctx.loss_scale).backward(inputs=self._own, retain_graph=True)
        self._own_pending = _PendingSum.start(self._own)
        self.overlapped_steps += 1

    # ------------------------------------------------------------------ delegation

    def bind(self, tasks: Sequence[str]) -> DistributedWeighting:
        self.method.bind(tasks)
        self.tasks = self.method.tasks
        return self

    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.method.stack_losses(losses)

    def restrict(self, present: Sequence[str]) -> AbstractContextManager[None]:
        return self.method.restrict(present)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Pass the epoch's mean losses on; they must be the global ones (the Trainer's are)."""
        self.method.on_epoch_end(epoch, mean_losses)

    def parameters(self) -> list[nn.Parameter]:
        return self.method.parameters()

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.method.load_state_dict(state)
        self.tasks = self.method.tasks

    def reset(self) -> None:
        self.method.reset()
        self.tasks = None

    def to(self, device: torch.device | str) -> Self:
        self.method.to(device)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        return {"method": self.method, "world_size": self.context.world_size}

    def __getattr__(self, name: str) -> Any:
        # the wrapped method's other public attributes (``task_weights``, ...)
        if name.startswith("_") or name in ("method", "context"):
            raise AttributeError(name)
        return getattr(self.method, name)

    def __str__(self) -> str:
        return str(self.method)
