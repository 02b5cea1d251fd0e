"""Every gradient method on a ``torch.compile``d model gives the update of the same model run
eagerly, in modes 'shared' (``torch.compile(model)``) and 'representation' (the encoder replaced by
``torch.compile(encoder)``), for two steps each (the eager model's second step takes the
layer-wise Gramian path; a compiled model is never hooked: its Gramian comes from the explicit
Jacobian, docs/weighting.md).

Most cases use backend ``aot_eager`` (the graph capture and autograd of compile, no code
generation: seconds); one case runs inductor (generated C++, about a minute: marked slow).
Both sides compute in float32 the same functions with operations decomposed and reordered by
the compiler, so they differ by float32 rounding, a few 1e-7 of the update's norm on these
well-conditioned problems (T = 3); the bound, 1e-4, is far above that and far below any
change of weights (the methods' weights move the update by O(1)).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import pytest
import torch
import torch._functorch.config
from torch import Tensor, nn

from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting._engine.hooks import compiled
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradient import GradientWeighting
from tests.weighting._methods import BUILD_ARGS, METHODS
from tests.weighting._models import TinyHPS, cnn_model, mlp_model

#: every gradient method, and compose (UW's weights, then a gradient aggregator)
GRADIENT = [
    *(n for n in METHODS if issubclass(WEIGHTINGS.lookup(n), GradientWeighting)),
    "compose",
]
TOLERANCE = 1e-4


def _takes_jacobian(name: str) -> bool:
    return "jacobian" in inspect.signature(WEIGHTINGS.lookup(name)).parameters


def _make(name: str, jacobian: str) -> Weighting:
    args = BUILD_ARGS.get(name, dict)()
    if jacobian == "shared":
        pass
    elif name == "compose":
        args["aggregator"] = WEIGHTINGS.build(args["aggregator"], jacobian=jacobian)
    else:
        args["jacobian"] = jacobian
    return WEIGHTINGS.build(name, **args)


def _losses(outs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {t: (k + 1) * o.float().pow(2).mean() for k, (t, o) in enumerate(outs.items())}


def _grads(model: TinyHPS) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _step(method: Weighting, run: nn.Module, model: TinyHPS, x: Tensor, mode: str) -> Tensor:
    """One backward of ``method`` on ``run`` (the model, or its compiled wrapper); the
    gradients of every parameter of ``model``."""
    model.zero_grad()
    if mode == "representation":
        outs, rep = model.forward_with_representation(x)
        method.backward(_losses(outs), run, representation=rep)
    else:
        method.backward(_losses(run(x)), run)
    return _grads(model)


def _compare(
    name: str,
    mode: str,
    compile_: Callable[[TinyHPS], nn.Module],
    steps: int = 2,
    build: Callable[..., tuple[TinyHPS, Tensor]] = mlp_model,
) -> None:
    eager, x = build(seed=3)
    eager, x = eager.float(), x.float()
    model = copy.deepcopy(eager)
    run = compile_(model)
    method, twin = _make(name, mode), _make(name, mode)
    outs = run.forward_with_representation(x)[1] if mode == "representation" else run(x)
    graph = outs if isinstance(outs, Tensor) else next(iter(outs.values()))
    assert "Compiled" in type(_first_compiled(graph)).__name__  # compiled code ran
    for _ in range(steps):
        want = _step(twin, eager, eager, x, mode)
        got = _step(method, run, model, x, mode)
        assert bool(torch.isfinite(got).all())
        assert float((got - want).norm()) <= TOLERANCE * float(want.norm()), name


def _first_compiled(out: Tensor) -> object:
    """The first autograd node of a compiled graph below ``out`` (else its own node)."""
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if "Compiled" in type(node).__name__:
            return node
        stack.extend(fn for fn, _ in node.next_functions)
    return out.grad_fn


def _compile_whole(backend: str) -> Callable[[TinyHPS], nn.Module]:
    def build(model: TinyHPS) -> nn.Module:
        run = torch.compile(model, backend=backend)
        assert compiled(run)
        return run

    return build


def _compile_encoder_with(backend: str) -> Callable[[TinyHPS], nn.Module]:
    def build(model: TinyHPS) -> nn.Module:
        model.encoder = torch.compile(model.encoder, backend=backend)  # type: ignore[assignment]
        assert compiled(model)
        return model

    return build


_compile_encoder = _compile_encoder_with("aot_eager")


@pytest.mark.parametrize("name", GRADIENT)
def test_compiled_model_shared_mode_equals_eager(name: str) -> None:
    _compare(name, "shared", _compile_whole("aot_eager"))


@pytest.mark.parametrize("name", [n for n in GRADIENT if n == "compose" or _takes_jacobian(n)])
def test_compiled_encoder_representation_mode_equals_eager(name: str) -> None:
    _compare(name, "representation", _compile_encoder)


@pytest.mark.slow
def test_inductor_compiled_model_equals_eager() -> None:
    """Generated code: the vectorised backward cannot batch inductor's compiled backward, and
    the engine takes it one task at a time (the same Jacobian). The CNN's batch norm makes
    inductor donate buffers to the backward, which then refuses the second pass every gradient
    method takes: compiled with donated buffers off (docs/weighting.md)."""
    _compare("upgrad", "shared", _compile_whole("inductor"))
    _compare("pcgrad", "shared", _compile_whole("inductor"), steps=1)
    with torch._functorch.config.patch(donated_buffer=False):
        _compare("mgda", "shared", _compile_whole("inductor"), build=cnn_model)
        _compare("upgrad", "representation", _compile_encoder_with("inductor"), build=cnn_model)


def test_uncompiled_models_are_hooked() -> None:
    model, _ = mlp_model()
    assert not compiled(model)
