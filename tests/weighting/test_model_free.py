"""The model-free form of ``backward``: any module, the shared parameters or the shared
features given by the caller; the same gradients as the model form on the same network.

Also: learnable method parameters left out of every optimiser warn once, and a task's static
weight is never silently ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from mtlkit.weighting import MethodParametersWarning, Weighting, for_tasks, get
from mtlkit.weighting.gradient import graph_leaves
from tests.weighting._methods import METHODS, is_gradient, make
from tests.weighting._models import TinyHPS, cnn_model, mlp_model

#: how the model-free call describes the same network (TinyHPS: encoder, then heads)
FORMS: dict[str, Callable[[TinyHPS, Tensor], dict[str, Any]]] = {
    "shared_module": lambda m, rep: {"shared_params": m.encoder},
    "shared_list": lambda m, rep: {
        "shared_params": list(m.encoder.parameters()),
        "task_params": list(m.heads.parameters()),
    },
    "shared_list_inferred_heads": lambda m, rep: {"shared_params": m.encoder.parameters()},
    "features": lambda m, rep: {"representation": rep},
    "features_and_module": lambda m, rep: {"shared_params": m.encoder, "representation": rep},
}


#: documented exception: GradDrop draws its random numbers per coordinate of the shared
#: gradient, so its result depends on the order of the shared parameters; inferred from the
#: features' graph, that order is the graph's, not the model's registration order
ORDER_SENSITIVE = {"graddrop"}


class GraphOrderHPS(TinyHPS):
    """TinyHPS whose shared_parameters() come in the order the features' graph reaches them."""

    def shared_parameters(self) -> list[nn.Parameter]:
        _, rep = self.forward_with_representation(torch.zeros(1, 6, dtype=torch.float64))
        return graph_leaves([rep])  # type: ignore[return-value]


def _losses(model: TinyHPS, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    outputs, rep = model.forward_with_representation(x)
    losses = {t: (k + 1) * o.pow(2).mean() + 0.1 for k, (t, o) in enumerate(outputs.items())}
    return losses, rep


def _grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _run(
    method: Weighting, model: TinyHPS, x: Tensor, call: Callable[[dict[str, Tensor], Tensor], Any]
) -> list[Tensor]:
    """Three steps (the engine hooks the layers after the first), the gradients of each."""
    out = []
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        losses, rep = _losses(model, x)
        call(losses, rep)
        out.append(_grads(model))
    return out


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", METHODS)
def test_model_free_equals_model_form(name: str, form: str) -> None:
    """Every registered method gives the same gradients (and records) both ways."""
    model, x = mlp_model()
    reference, free = make(name), make(name)
    uses_rep = "representation" in FORMS[form](model, x)
    if name in ORDER_SENSITIVE and form == "features":
        model.__class__ = GraphOrderHPS
    expected = _run(
        reference,
        model,
        x,
        lambda losses, rep: reference.backward(
            losses, model, representation=rep if uses_rep else None
        ),
    )
    got = _run(free, model, x, lambda losses, rep: free.backward(losses, **FORMS[form](model, rep)))
    for step, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a.shape == b.shape, f"{name}, step {step + 1}: different parameters got gradients"
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=f"{name}, step {step + 1}")


@pytest.mark.parametrize("name", ["ew", "uw", "dwa", "rlw", "famo"])
def test_loss_methods_need_no_parameters(name: str) -> None:
    """A loss-based method fills every gradient from the losses alone."""
    model, x = mlp_model()
    reference, free = make(name), make(name)
    expected = _run(reference, model, x, lambda losses, rep: reference.backward(losses, model))
    got = _run(free, model, x, lambda losses, rep: free.backward(losses))
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a)


def test_any_module_with_conv_trunk_uses_the_fast_path() -> None:
    """A plain nn.Module (no shared_parameters()): the trunk given as a module is hooked, and
    the result equals the explicit Jacobian's (the trunk given as a list of parameters)."""
    model, x = cnn_model()
    plain = nn.ModuleDict({"trunk": model.encoder, "heads": model.heads})
    assert not hasattr(plain, "shared_parameters")
    by_module, by_list = get("upgrad"), get("upgrad")
    fast = _run(
        by_module, model, x, lambda ls, _: by_module.backward(ls, shared_params=plain.trunk)
    )
    exact = _run(
        by_list,
        model,
        x,
        lambda ls, _: by_list.backward(ls, shared_params=list(plain.trunk.parameters())),
    )
    for a, b in zip(exact, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_gradient_method_without_shared_parameters_says_what_to_pass() -> None:
    model, x = mlp_model()
    losses, _ = _losses(model, x)
    with pytest.raises(ConfigError, match=r"shared_params= .* or representation="):
        get("pcgrad").backward(losses)
    plain = nn.Sequential(model.encoder)
    with pytest.raises(ConfigError, match="has no shared_parameters"):
        get("mgda").backward(losses, plain)
    with pytest.raises(ConfigError, match="iterable of parameters"):
        get("mgda").backward(losses, shared_params=["encoder"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"must be an nn\.Module"):
        get("mgda").backward(losses, list(model.parameters()))  # type: ignore[arg-type]


def test_last_shared_needs_a_module() -> None:
    model, x = mlp_model()
    losses, _ = _losses(model, x)
    with pytest.raises(ConfigError, match="last_shared' needs the layers"):
        get("mgda", jacobian="last_shared").backward(
            losses, shared_params=list(model.encoder.parameters())
        )
    model.zero_grad()
    losses, _ = _losses(model, x)
    get("mgda", jacobian="last_shared").backward(losses, shared_params=model.encoder)
    assert all(p.grad is not None for p in model.parameters())


def test_gradient_methods_are_gradient_methods() -> None:
    """The suite above covers both families (a guard against an empty parametrisation)."""
    assert sum(is_gradient(make(n)) for n in METHODS) >= 15
    assert sum(not is_gradient(make(n)) for n in METHODS) >= 10


# ---------------------------------------------------------------- learnable method parameters


def _train(method: Weighting, with_method_params: bool, steps: int = 4) -> list[Warning]:
    model, x = mlp_model()
    names = model.task_names
    params = [*model.parameters()]
    if with_method_params:
        params += method.bind(names).parameters()
    optimizer = torch.optim.SGD(params, lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            losses, _ = _losses(model, x)
            method.backward(losses, model)
            optimizer.step()
    return [w.message for w in caught if issubclass(w.category, MethodParametersWarning)]


def test_forgotten_method_parameters_warn_once() -> None:
    uw = get("uw")
    caught = _train(uw, with_method_params=False)
    assert len(caught) == 1
    assert "log_vars" in str(caught[0]) and "method.parameters()" in str(caught[0])


@pytest.mark.parametrize("name", ["uw", "compose"])
def test_method_parameters_in_the_optimiser_do_not_warn(name: str) -> None:
    method = make(name)
    before = [p.detach().clone() for p in method.bind(mlp_model()[0].task_names).parameters()]
    assert _train(method, with_method_params=True) == []
    after = method.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_methods_without_parameters_never_warn() -> None:
    assert _train(get("ew"), with_method_params=False) == []


def test_parameters_before_bind_says_how() -> None:
    with pytest.raises(ConfigError, match=r"bind\(task_names\)"):
        get("uw").parameters()
    assert len(get("uw").bind(["a", "b"]).parameters()[0]) == 2


# ---------------------------------------------------------------- task weights


def test_task_weights_go_to_static() -> None:
    tasks = [Task("a", "regression", weight=3.0), Task("b", "regression")]
    method = for_tasks(get("static"), tasks)
    a, b = torch.tensor(2.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    record = method.backward({"a": a * 1.0, "b": b * 1.0})
    assert record.weights == {"a": 3.0, "b": 1.0}
    assert (a.grad, b.grad) == (3.0, 1.0)


def test_task_weights_are_never_ignored() -> None:
    tasks = [Task("a", "regression", weight=3.0), Task("b", "regression")]
    with pytest.raises(ConfigError, match=r"task weights \{'a': 3.0\}.*UW sets its own"):
        for_tasks(get("uw"), tasks)
    with pytest.raises(ConfigError, match=r"task .a. has weight 3\.0"):
        for_tasks(get("static", weights={"a": 2.0}), tasks)
    composed = for_tasks(get("compose", weighting="static", aggregator="pcgrad"), tasks)
    assert composed.weighting.alpha == {"a": 3.0}  # type: ignore[attr-defined]


def test_trainer_rejects_ignored_task_weights() -> None:
    from mtlkit import Trainer, build_model
    from mtlkit.nn.encoders import MLPEncoder

    tasks = [Task("a", "regression", weight=2.0), Task("b", "regression")]
    model = build_model("hps", MLPEncoder(4, hidden=[8]), tasks)
    with pytest.raises(ConfigError, match="task weights"):
        Trainer(model, tasks, get("ew"), epochs=1, progress=False)
    trainer = Trainer(model, tasks, get("static"), epochs=1, progress=False)
    assert trainer.weighting.alpha == {"a": 2.0}  # type: ignore[attr-defined]
