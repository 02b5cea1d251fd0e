"""Gradient-based methods: they combine the per-task gradients of the shared parameters.

The per-task gradients form the Jacobian J (T × P): row i is ∇_θ L_i over the shared
parameters θ. A method turns J into one update vector of length P (:meth:`aggregate`);
task-specific parameters always receive their own task's gradient (of Σ_i L_i).

Two kinds of method:

- :class:`GramianWeighting` needs only the Gram matrix G = J Jᵀ: it computes task weights
  α = f(G) and the update is Jᵀα (MGDA, IMTL-G, CAGrad, Nash-MTL, UPGrad, ...). J is never
  formed: G is built layer by layer (:func:`mtlkit.weighting._engine.gram.gramian`) from each
  shared layer's inputs A and per-task output gradients Δ_i, and the update of that layer's
  weight is (Σ_i α_i Δ_i)ᵀA, one product per layer from the same A and Δ, with no further
  backward pass;
- :class:`JacobianAggregator` needs J itself (PCGrad, GradDrop, GradVac, ConFIG, ...); J comes
  from one vectorised backward pass.

Where the Jacobian is taken is one knob for every method, ``jacobian``:

- ``"shared"`` (default): all shared parameters;
- ``"last_shared"``: the parameters of the last shared layer only
  (``model.last_shared_parameters()``, else the last module whose parameters are all shared).
  The method's weights are then applied to all shared parameters as one backward pass of
  Σ_i α_i L_i. A :class:`JacobianAggregator` has no weights of its own: its update u on the
  last layer is turned into least-squares effective weights w (Jᵀw ≈ u, minimum norm), which
  are applied the same way;
- ``"representation"``: the shared representation the heads read (MGDA-UB, Sener & Koltun
  2018, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS); the update on the
  representation is back-propagated into the shared parameters; the cheapest mode.

``update_every`` = k > 1 reuses the last weights for k − 1 steps in between: the Gram matrix,
the solver and the per-task gradients are skipped and the step is one backward pass of
Σ_i α_i L_i with the cached α, the cost of equal weighting. For a JacobianAggregator the
cached weights are the least-squares effective weights of its last update. Records of reused
steps carry the weights, no norms or cosines, and ``extra['reused_weights'] = 1``.

Pass ``representation=`` to :meth:`GradientWeighting.backward` whenever the model has one
(``model.forward_with_representation``), in every mode: each task is then back-propagated
through its own head only and the T rows cross the shared encoder together, batched.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting._engine import (
    HeadFactors,
    effective_weights,
    gram_statistics,
    gramian,
    head_factors,
    head_passes,
    last_shared_parameters,
    passes_pay,
    row_gram,
    task_jacobian,
)
from mtlkit.weighting._threads import solver_threads
from mtlkit.weighting.base import StateField, StepContext, StepRecord, Weighting

JACOBIAN_MODES = ("shared", "last_shared", "representation")

__all__ = [
    "JACOBIAN_MODES",
    "GradientWeighting",
    "GramianWeighting",
    "JacobianAggregator",
    "gram_statistics",
    "graph_leaves",
    "shared_params_of",
    "split_parameters",
    "task_jacobian",
]


def shared_params_of(model: nn.Module, method: object) -> list[Tensor]:
    """The model's trainable shared parameters; an error when it declares none."""
    getter = getattr(model, "shared_parameters", None)
    if getter is None:
        raise ConfigError(
            f"{method}: the model {type(model).__name__} has no shared_parameters(); "
            "gradient-based methods need a model that declares its shared parameters"
        )
    params = [p for p in getter() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"{method}: the model {type(model).__name__} declares no shared parameters, "
            "so there is nothing to combine task gradients on"
        )
    return params


def _own_params(model: nn.Module, shared: Sequence[Tensor]) -> list[nn.Parameter]:
    shared_ids = {id(p) for p in shared}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]


def graph_leaves(roots: Sequence[Tensor]) -> list[Tensor]:
    """The trainable leaf tensors (parameters) that ``roots`` depend on, in the order the
    autograd graph reaches them from the first root on."""
    leaves: dict[int, Tensor] = {}
    seen: set[int] = set()
    for root in roots:
        stack = [root.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            variable = getattr(node, "variable", None)  # an AccumulateGrad node
            if isinstance(variable, Tensor):
                leaves.setdefault(id(variable), variable)
            stack.extend(reversed([fn for fn, _ in node.next_functions if fn is not None]))
    return [v for v in leaves.values() if v.requires_grad]


def split_parameters(ctx: StepContext, method: object) -> tuple[list[Tensor], list[Tensor]]:
    """(shared, task-specific) trainable parameters of a step.

    Shared: ``ctx.shared_params`` when the caller named them, else the model's
    ``shared_parameters()``, else the parameters the representation depends on. Task-specific:
    ``ctx.task_params`` when named, else the model's other parameters, else every other
    parameter the losses reach.
    """
    shared: list[Tensor]
    if ctx.shared_params is not None:
        shared = [p for p in ctx.shared_params if p.requires_grad]
        if not shared:
            raise ConfigError(f"{method}: shared_params holds no trainable parameter")
    elif ctx.model is not None and hasattr(ctx.model, "shared_parameters"):
        shared = [p for p in shared_params_of(ctx.model, method)]
    elif ctx.representation is not None:
        shared = graph_leaves([ctx.representation])
        if not shared:
            raise ConfigError(
                f"{method}: the representation depends on no trainable parameter, so there "
                "is nothing shared to combine task gradients on"
            )
    else:
        where = (
            f"the model {type(ctx.model).__name__} has no shared_parameters()"
            if ctx.model is not None
            else "no model was given"
        )
        raise ConfigError(
            f"{method}: gradient-based methods need the shared parameters, and {where}; pass "
            "shared_params= (a module or parameters) or representation= (the shared features)"
        )
    ids = {id(p) for p in shared}
    own: list[Tensor]
    if ctx.task_params is not None:
        own = [p for p in ctx.task_params if p.requires_grad and id(p) not in ids]
    elif ctx.model is not None:
        own = [*_own_params(ctx.model, shared)]
    else:
        own = [p for p in graph_leaves(list(ctx.losses.values())) if id(p) not in ids]
    return shared, own


def _accumulate(params: Sequence[Tensor], flat: Tensor) -> None:
    """Add the slices of the flat vector ``flat`` to the ``.grad`` of ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def _accumulate_each(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], scale: float
) -> None:
    """Add ``scale`` · grads[k] to ``params[k].grad`` (a None gradient leaves the parameter)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        g = (g if scale == 1.0 else g * scale).to(p.dtype)
        p.grad = g if p.grad is None else p.grad + g


def _scaled(losses: Tensor, scale: float) -> Tensor:
    """The losses at the loss scale s: per-task backward passes seeded with s·I do not
    underflow in half precision (fp16 autocast with a GradScaler)."""
    return losses if scale == 1.0 else losses * scale


def _unscaled(jacobian: Tensor, scale: float) -> Tensor:
    """A Jacobian of s·L (from :func:`_scaled`) → the Jacobian of L, in float32 at least: the
    solvers never see half-precision values (dividing by the GradScaler's power of two is
    exact)."""
    dtype = torch.promote_types(jacobian.dtype, torch.float32)
    jacobian = jacobian.to(dtype)
    return jacobian if scale == 1.0 else jacobian / scale


def _step_jacobian(ctx: StepContext, inputs: Sequence[Tensor], rows: Tensor | None) -> Tensor:
    """The Jacobian of the step's losses over ``inputs`` (unscaled, float32 at least), global
    in data-parallel training: taken by ``ctx.global_jacobian`` when set (which overlaps the
    reduction with the backward pass), else taken here and passed to ``ctx.reduce_jacobian``."""
    scale = ctx.loss_scale
    losses = _scaled(ctx.stacked, scale)
    if ctx.global_jacobian is not None:
        return _unscaled(ctx.global_jacobian(losses, inputs, ctx.representation, rows), scale)
    passes = passes_pay(ctx.model if ctx.model is not None else ctx.shared_module, inputs)
    jac = task_jacobian(
        losses, inputs, representation=ctx.representation, head_rows=rows, passes=passes
    )
    jac = _unscaled(jac, scale)
    return jac if ctx.reduce_jacobian is None else ctx.reduce_jacobian(jac)


class GradientWeighting(Weighting):
    """Base of gradient-based methods (see the module docstring)."""

    #: whether the method returns task weights for the record (False: effective weights are
    #: estimated by least squares of the update on the task gradients)
    gives_weights: ClassVar[bool] = True
    #: the step count, and the weights cached by ``update_every`` (per task; dropped if made in
    #: a partial step)
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_step": StateField("int", key="step"),
        "_cached": StateField("vector", key="cached_weights", axes=(0,)),
    }
    #: whether the rows ∂L_i/∂r may be written into one buffer reused from step to step: only
    #: for methods that never see J (or a view of it) and so cannot keep it past the step
    reuse_rows: ClassVar[bool] = False
    _step: int
    _cached: Tensor | None

    def __init__(self, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__()
        if jacobian not in JACOBIAN_MODES:
            raise ConfigError(
                f"{type(self).__name__}: option 'jacobian' must be one of "
                f"{', '.join(JACOBIAN_MODES)}, got '{jacobian}'"
            )
        if isinstance(update_every, bool) or int(update_every) != update_every or update_every < 1:
            raise ConfigError(
                f"{type(self).__name__}: option 'update_every' must be an integer ≥ 1, "
                f"got {update_every}"
            )
        self.jacobian = jacobian
        self.update_every = int(update_every)
        if self.update_every > 1:
            self.stateful = True  # type: ignore[misc]  # the cached weights and step count
        self._per_task: list[Tensor] = []  # this step's task losses, while backward runs
        self._rows_buffer: Tensor | None = None  # storage for the rows ∂L_i/∂r of a step

    @property
    def needs_representation(self) -> bool:
        return self.jacobian == "representation"

    @property
    def uses_representation(self) -> bool:
        return True

    @property
    def needs_all_tasks(self) -> bool:
        return True

    @property
    def jacobian_mode(self) -> str | None:
        return self.jacobian

    @abstractmethod
    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        """The update vector (length P) from the T × P Jacobian."""

    def last_weights(self) -> Tensor | None:
        """The task weights of the last :meth:`aggregate` call, when the method has them."""
        return getattr(self, "_last_weights", None)

    # ------------------------------------------------------------------ backward

    def step(self, ctx: StepContext, /) -> StepRecord:
        assert self.tasks is not None
        shared, own = split_parameters(ctx, self)
        if self.jacobian == "representation" and ctx.representation is None:
            raise ConfigError(
                f"{self}: jacobian 'representation' needs the shared representation; "
                "pass representation= (model.forward_with_representation gives it)"
            )
        step, self._step = self._step, self._step + 1
        if self._cached is not None and step % self.update_every != 0:
            self._apply(ctx, self._cached, own, shared, None)
            return StepRecord(
                weights=self._record_weights(self._cached), extra={"reused_weights": 1.0}
            )
        self._per_task = [ctx.losses[t] for t in self.tasks]
        if self.jacobian == "shared":
            weights, gram = self._shared_step(ctx, own, shared)
        else:
            weights, gram = self._partial_step(ctx, own, shared)
        self._per_task = []  # do not hold the step's graph
        if self.update_every > 1:
            self._cached = weights.detach().double()
        norms, cosines = gram_statistics(gram, self.tasks)
        return StepRecord(weights=self._record_weights(weights), norms=norms, cosines=cosines)

    def _head_rows(
        self, ctx: StepContext, own: Sequence[Tensor]
    ) -> tuple[Tensor | None, list[Tensor]]:
        """This step's rows ∂(s·L_i)/∂r at the loss scale s (None without r), and the task
        parameters still owed s·∇ Σ_i L_i: with r, the same backward pass through the heads
        gives it (:func:`head_passes`), and none are left. The rows keep the scale, so that the
        passes they seed through the encoder do not underflow in half precision."""
        if ctx.representation is None:
            return None, list(own)
        buffer = self._rows_buffer if self.reuse_rows else None
        scale = ctx.loss_scale
        losses = self._per_task if scale == 1.0 else [loss * scale for loss in self._per_task]
        rows, grads = head_passes(losses, ctx.representation, own, out=buffer)
        if self.reuse_rows:
            self._rows_buffer = rows  # written over next step
        _accumulate_each(own, grads, 1.0)
        return rows, []

    def _shared_step(
        self, ctx: StepContext, own: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Mode 'shared' for a method that needs J: the update is written directly."""
        stacked, loss_scale = ctx.stacked, ctx.loss_scale
        rows, own = self._head_rows(ctx, own)
        jac = _step_jacobian(ctx, shared, rows)
        update = self.aggregate(jac)
        gram = row_gram(jac)
        weights = self.last_weights()
        if weights is None or not self.gives_weights:
            weights = effective_weights(gram, jac, update)
        if own:
            (stacked.sum() * loss_scale).backward(inputs=list(own))
        _accumulate(shared, update * loss_scale)
        return weights, gram

    def _partial_step(
        self, ctx: StepContext, own: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Modes 'last_shared' and 'representation': J of a small part, weights for all."""
        stacked, model, representation = ctx.stacked, ctx.model, ctx.representation
        loss_scale = ctx.loss_scale
        rows, own = self._head_rows(ctx, own)
        if self.jacobian == "representation":
            assert rows is not None and representation is not None
            jac = _unscaled(rows.reshape(rows.shape[0], -1), loss_scale)
        else:
            root = model if model is not None else ctx.shared_module
            if root is None:
                raise ConfigError(
                    f"{self}: jacobian 'last_shared' needs the layers of the shared part: "
                    "pass shared_params= as a module, or the model"
                )
            last = last_shared_parameters(root, shared)
            if not last:
                raise ConfigError(
                    f"{self}: jacobian 'last_shared' found no shared layer in "
                    f"{type(root).__name__}; define last_shared_parameters() on the model"
                )
            jac = _step_jacobian(ctx, last, rows)
        update, gram = self._aggregate_with_gram(jac)
        weights = self.last_weights()
        if weights is None or not self.gives_weights:
            weights = effective_weights(gram, jac, update)
        if self.jacobian == "representation":
            assert representation is not None
            if own:
                (stacked.sum() * loss_scale).backward(inputs=list(own), retain_graph=True)
            representation.backward(
                (update * loss_scale).view_as(representation).to(representation.dtype),
                inputs=list(shared),
            )
        else:
            self._apply(ctx, weights, own, shared, rows)
        return weights, gram

    def _aggregate_with_gram(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        """The update and the Gram matrix J Jᵀ of ``jacobian``."""
        return self.aggregate(jacobian), row_gram(jacobian)

    def _apply(
        self,
        ctx: StepContext,
        weights: Tensor,
        own: Sequence[Tensor],
        shared: Sequence[Tensor],
        rows: Tensor | None,
    ) -> None:
        """Task parameters get ∇ Σ_i L_i, shared ones ∇ Σ_i α_i L_i (one backward each)."""
        stacked, representation, loss_scale = ctx.stacked, ctx.representation, ctx.loss_scale
        w = weights.detach().to(stacked.dtype)
        if own:
            (stacked.sum() * loss_scale).backward(inputs=list(own), retain_graph=True)
        if rows is not None and representation is not None:
            seed = (w.to(rows.dtype) @ rows.reshape(rows.shape[0], -1)).view_as(representation)
            representation.backward(seed, inputs=list(shared))  # the rows carry the loss scale
        else:
            ((w * stacked).sum() * loss_scale).backward(inputs=list(shared))

    def _record_weights(self, weights: Tensor) -> dict[str, float]:
        assert self.tasks is not None
        return dict(zip(self.tasks, weights.detach().double().tolist(), strict=True))

    def hyperparameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.jacobian != "shared":
            params["jacobian"] = self.jacobian
        if self.update_every != 1:
            params["update_every"] = self.update_every
        return params


class GramianWeighting(GradientWeighting):
    """A gradient method whose weights depend on the Gram matrix alone: α = f(J Jᵀ).

    Subclasses implement :meth:`weights_from_gram`. In mode 'shared', :meth:`backward` never
    forms J: G is built layer by layer, and the update Jᵀα comes from the same per-layer
    inputs and per-task output gradients
    (:meth:`~mtlkit.weighting._engine.gram.Gramian.combine`), without another backward pass.
    """

    reuse_rows = True  # the method sees G only

    @abstractmethod
    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        """Task weights α (length T) from the T × T Gram matrix."""

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        return self._aggregate_with_gram(jacobian)[0]

    def solve(self, gram: Tensor, /) -> Tensor:
        """:meth:`weights_from_gram`, with numpy's and scipy's BLAS on one thread while it runs
        (:mod:`mtlkit.weighting._threads`: T × T problems gain nothing from more, and a busy
        machine stalls them)."""
        with solver_threads():
            return self.weights_from_gram(gram)

    def _aggregate_with_gram(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        gram = row_gram(jacobian)
        alpha = self.solve(gram)
        self._last_weights = alpha.detach()
        return alpha.to(jacobian.dtype) @ jacobian, gram

    def _partial_step(
        self, ctx: StepContext, own: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Mode 'representation' with heads that read r through linear maps: the rows are
        taken in factored form (:func:`~mtlkit.weighting._engine.backward.head_factors`), so
        the step is one pass through the heads, G from the factors, and one pass through the
        encoder seeded with Σ_i α_i ∂L_i/∂r; otherwise as every gradient method."""
        representation = ctx.representation
        if self.jacobian != "representation" or representation is None:
            return super()._partial_step(ctx, own, shared)
        found = head_factors(self._per_task, representation, own, scale=ctx.loss_scale)
        if found is None:
            return super()._partial_step(ctx, own, shared)
        factors, grads = found
        _accumulate_each(own, grads, 1.0)
        gram = factors.gram()
        alpha = self.solve(gram).detach()
        self._last_weights = alpha
        seed = factors.combine(alpha) * ctx.loss_scale
        representation.backward(seed.to(representation.dtype), inputs=list(shared))
        return alpha, gram

    def _shared_step(
        self, ctx: StepContext, own: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        if ctx.reduce_jacobian is not None or ctx.global_jacobian is not None:
            # distributed: G of the global J needs J itself
            return super()._shared_step(ctx, own, shared)
        if ctx.sharded_gram is not None:  # sharded (FSDP): Σ_r of the shards' partial Grams
            alpha, gram = ctx.sharded_gram(ctx, self.weights_from_gram)
            self._last_weights = alpha
            return alpha, gram
        stacked, loss_scale = ctx.stacked, ctx.loss_scale
        rows, own = self._head_rows(ctx, own)
        root = ctx.model if ctx.model is not None else ctx.shared_module
        result = gramian(
            _scaled(stacked, loss_scale),
            root,
            shared,
            representation=ctx.representation,
            head_rows=rows,
        )  # of s·L: s²·G, and combine gives s·Jᵀα
        gram = result.matrix if loss_scale == 1.0 else result.matrix / loss_scale**2
        alpha = self.solve(gram).detach()
        self._last_weights = alpha
        if own:
            (stacked.sum() * loss_scale).backward(inputs=list(own))
        _accumulate_each(shared, result.combine(alpha), 1.0)
        return alpha, gram


class JacobianAggregator(GradientWeighting):
    """A gradient method that needs the Jacobian itself, not only its Gram matrix."""

    gives_weights = False

    def factored_update(self, factors: HeadFactors, representation: Tensor) -> Tensor | None:
        """The update on the representation r (r's shape) computed from the heads' rows in
        factored form (:class:`~mtlkit.weighting._engine.backward.HeadFactors`), for a method
        whose algorithm can use them without forming the rows; None (the default): the rows
        are formed."""
        return None

    def _partial_step(
        self, ctx: StepContext, own: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Mode 'representation' with heads that read r through linear maps, for a method
        that implements :meth:`factored_update`: one pass through the heads for the factors,
        the update from them, G from them (O²(N + d) products), the effective weights
        G⁺(J·update) with J·update from them, and one pass through the encoder;
        otherwise as every gradient method."""
        representation = ctx.representation
        if (
            self.jacobian != "representation"
            or representation is None
            or type(self).factored_update is JacobianAggregator.factored_update
        ):
            return super()._partial_step(ctx, own, shared)
        found = head_factors(self._per_task, representation, own, scale=ctx.loss_scale)
        if found is None:
            return super()._partial_step(ctx, own, shared)
        factors, grads = found
        update = self.factored_update(factors, representation)
        if update is None:  # the method declines these factors: the rows, from the factors
            update = self.aggregate(factors.rows()).view_as(representation)
        _accumulate_each(own, grads, 1.0)
        gram = factors.gram()
        # J·update in the factors' dtype, the precision G itself has (float32 for float32
        # heads): the record's effective weights G⁺(J·update) are no more accurate than G
        jacobian_update = factors.inner(update).double().unsqueeze(1)
        weights = (torch.linalg.pinv(gram.double(), hermitian=True) @ jacobian_update)[:, 0]
        seed = update * ctx.loss_scale
        representation.backward(seed.to(representation.dtype), inputs=list(shared))
        return weights, gram
