"""One backward pass per task (no vmap, no hooks) for convolutional encoders on CPU: when the
engine takes it (``passes_pay``), and that it gives the same J, G and update."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting._engine import backward as backward_mod
from mtlkit.weighting._engine import gram as gram_mod
from mtlkit.weighting._engine import gramian, passes_pay, release_hooks, task_jacobian
from tests.weighting._models import as_dict, cnn_model, mlp_model, shared_grad, task_losses


def _flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    pairs = zip(grads, params, strict=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in pairs])


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks for m in model.modules())


def test_the_rule() -> None:
    cnn, _ = cnn_model()
    mlp, _ = mlp_model()
    assert passes_pay(cnn, cnn.shared_parameters())
    assert not passes_pay(mlp, mlp.shared_parameters())
    assert not passes_pay(None, cnn.shared_parameters())
    # only the layers after the convolutions are shared: no shared convolution
    linear = [p for m in cnn.encoder if isinstance(m, nn.Linear) for p in m.parameters()]
    assert not passes_pay(cnn, linear)
    # not on CPU (a GPU keeps the batched pass): parameters on the meta device
    assert not passes_pay(cnn.to("meta"), cnn.shared_parameters())


@pytest.mark.parametrize("through_rep", [False, True])
def test_gram_and_update_equal_the_batched_jacobian(
    through_rep: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = cnn_model(tasks=4)
    shared = model.shared_parameters()
    rows: list[int] = []
    original = backward_mod._row_by_row

    def spy(outputs: Tensor, inputs: list[Tensor], grad_outputs: Tensor) -> list[object]:
        rows.append(grad_outputs.shape[0])
        return original(outputs, inputs, grad_outputs)

    monkeypatch.setattr(backward_mod, "_row_by_row", spy)
    weights = torch.tensor([0.7, -1.3, 2.1, 0.4], dtype=torch.float64)
    for _ in range(2):  # no hooks are installed: every step takes the passes
        losses, rep = task_losses(model, x)
        result = gramian(losses, model, shared, representation=rep if through_rep else None)
        jac = task_jacobian(losses, shared)  # the batched (vmap) pass
        assert result.jacobian is not None and not _hooked(model)
        torch.testing.assert_close(result.matrix, jac @ jac.T, rtol=1e-10, atol=1e-12)
        got = _flat(result.combine(weights), shared)
        torch.testing.assert_close(got, weights @ jac, rtol=1e-10, atol=1e-12)
    assert rows == [4, 4]


def test_hooks_from_an_earlier_layerwise_step_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = cnn_model()
    shared = model.shared_parameters()
    with monkeypatch.context() as m:
        m.setattr(gram_mod, "passes_pay", lambda model, inputs: False)
        gramian(task_losses(model, x)[0], model, shared)
        assert _hooked(model)
    gramian(task_losses(model, x)[0], model, shared)
    assert not _hooked(model)


def test_large_shared_linear_layers_keep_the_layerwise_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where J's columns of the shared Linear layers would take more than KEEP_ROWS_BYTES,
    the layer-wise path (which never forms them) is kept."""
    model, x = cnn_model()
    shared = model.shared_parameters()
    linear = 3 * (4 * 5 + 5) * 8  # T × the shared Linear's weight and bias, float64
    monkeypatch.setattr(gram_mod, "KEEP_ROWS_BYTES", linear)
    result = gramian(task_losses(model, x)[0], model, shared)
    assert not _hooked(model) and result.jacobian is not None  # within the bound: the passes
    monkeypatch.setattr(gram_mod, "KEEP_ROWS_BYTES", linear - 1)
    for _ in range(2):
        result = gramian(task_losses(model, x)[0], model, shared)
    assert _hooked(model) and result.jacobian is None
    release_hooks(model)


@pytest.mark.parametrize("name", ["upgrad", "mgda", "graddrop", "moco"])
def test_methods_give_the_same_update_with_and_without_passes(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Gramian method and a Jacobian method on a convolutional encoder: the passes change
    the update only by roundoff."""
    updates = []
    for layerwise in (True, False):
        with monkeypatch.context() as m:
            if layerwise:
                m.setattr(gram_mod, "passes_pay", lambda model, inputs: False)
                m.setattr("mtlkit.weighting.gradient.passes_pay", lambda model, inputs: False)
            torch.manual_seed(3)
            model, x = cnn_model(tasks=3)
            method = WEIGHTINGS.build(name)
            method.bind(model.task_names)
            for _ in range(2):  # the second step is the layer-wise one when hooked
                model.zero_grad(set_to_none=True)
                losses, rep = task_losses(model, x)
                method.backward(as_dict(model, losses), model, representation=rep)
            updates.append(shared_grad(model))
            release_hooks(model)
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-8, atol=1e-10)
