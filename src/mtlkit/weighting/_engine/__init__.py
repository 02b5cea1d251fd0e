"""The gradient engine: per-task gradients and their Gram matrix, without T backward passes
through the encoder (private; :mod:`mtlkit.weighting.gradient` is the public side).

With T task losses L_i and the shared parameters θ (P values), the Jacobian J is T × P
(row i is ∇_θ L_i) and the Gramian is G = J Jᵀ (T × T).

- :mod:`~mtlkit.weighting._engine.backward`: J in one vectorised backward (or, for a
  convolutional encoder on CPU, one ordinary backward pass per task: ``passes_pay``), the
  heads' rows ∂L_i/∂r in one pass through the heads;
- :mod:`~mtlkit.weighting._engine.gram`: G layer by layer from recorded layer inputs and
  per-task output gradients, and the update Jᵀw from the same records
  (:meth:`Gramian.combine`);
- :mod:`~mtlkit.weighting._engine.layers`: the per-layer rules (Linear, Conv1d/2d, norms,
  Embedding) and the routed outputs whose batched backward folds the tasks into the batch;
- :mod:`~mtlkit.weighting._engine.hooks`: the forward hooks that record those inputs.
"""

from mtlkit.weighting._engine.backward import (
    HeadFactors,
    batched_grad,
    head_factors,
    head_gradients,
    head_passes,
    last_shared_parameters,
    passes_pay,
    per_task_gradients,
    task_jacobian,
)
from mtlkit.weighting._engine.gram import (
    KEEP_ROWS_BYTES,
    Gramian,
    compute_gramian,
    effective_weights,
    gram_statistics,
    gramian,
)
from mtlkit.weighting._engine.hooks import MAX_RECORDS, release_hooks
from mtlkit.weighting._engine.layers import ROW_GRAM_BLOCK, layer_gramian, row_gram

__all__ = [
    "KEEP_ROWS_BYTES",
    "MAX_RECORDS",
    "ROW_GRAM_BLOCK",
    "Gramian",
    "HeadFactors",
    "batched_grad",
    "compute_gramian",
    "effective_weights",
    "gram_statistics",
    "gramian",
    "head_factors",
    "head_gradients",
    "head_passes",
    "last_shared_parameters",
    "layer_gramian",
    "passes_pay",
    "per_task_gradients",
    "release_hooks",
    "row_gram",
    "task_jacobian",
]
