"""Every gradient method with a bf16-autocast forward pass on CPU, on an MLP and a CNN: the
method's backward (run outside the autocast region, as the Trainer runs it) puts on the shared
parameters the update that aggregate() gives on the explicit Jacobian of the same losses.

The second step goes through the layer-wise Gramian engine, whose recorded layer inputs are then
bf16 while the output gradients may be float32; it used to fail there ("expected scalar type
Float but found BFloat16"). Both sides see the same bf16 graph; they differ by the bf16
rounding of autograd's weight gradients in the explicit Jacobian (about 1.5e-3 of the update's
norm), so the bound is 2e-2.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from mtlkit.train import Precision
from mtlkit.weighting import WEIGHTINGS
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradient import GradientWeighting, task_jacobian
from tests.weighting._methods import BUILD_ARGS, LOSS_TRANSFORM, METHODS, bound, make, step
from tests.weighting._models import TinyHPS, cnn_model, mlp_model, shared_grad

CPU = torch.device("cpu")
GRADIENT = [n for n in METHODS if issubclass(WEIGHTINGS.lookup(n), GradientWeighting)]


@pytest.mark.parametrize("build", [mlp_model, cnn_model], ids=["mlp", "cnn"])
@pytest.mark.parametrize("name", GRADIENT)
def test_bf16_autocast_backward_equals_aggregate(name: str, build) -> None:
    model, x = build()
    model, x = model.float(), x.float()  # autocast leaves float64 alone
    method = make(name)
    twin = copy.deepcopy(method)  # same state (and random generator) for aggregate
    for _ in range(2):  # the second step uses the recorded-layer Gramian path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = model(x)
        losses = {t: (k + 1) * o.float().pow(2).mean() for k, (t, o) in enumerate(outs.items())}
        stacked = torch.stack(list(losses.values()))
        bound(twin, model)
        if hasattr(twin, "observe_losses"):
            twin.observe_losses(stacked.detach())
        jac = task_jacobian(
            LOSS_TRANSFORM.get(name, lambda v: v)(stacked), model.shared_parameters()
        )
        want = twin.aggregate(jac)
        step(method, model, losses)
        got = shared_grad(model)
        assert bool(torch.isfinite(got).all())
        # bf16 rounds autograd's weight gradients (unit roundoff 3.9e-3); 1e-3 to 1.7e-3 here
        assert float((got - want.to(got.dtype)).norm()) <= 2e-2 * float(want.norm())


def _takes_jacobian(name: str) -> bool:
    return "jacobian" in inspect.signature(WEIGHTINGS.lookup(name)).parameters


def _make_mode(name: str, jacobian: str) -> Weighting:
    if jacobian == "shared":
        return make(name)
    args = BUILD_ARGS.get(name, dict)()
    if name == "compose":
        args["aggregator"] = WEIGHTINGS.build(args["aggregator"], jacobian=jacobian)
    else:
        args["jacobian"] = jacobian
    return WEIGHTINGS.build(name, **args)


MODES = [
    (name, mode)
    for name in [*GRADIENT, "compose"]  # compose: UW's weights, then a gradient aggregator
    for mode in ("shared", "last_shared", "representation")
    if mode == "shared" or name == "compose" or _takes_jacobian(name)
]


#: methods whose update grows as the gradients shrink: losses not scaled down (see the test)
INVERSE = {"nash_mtl": 1.0, "fairgrad": 1.0}


def _losses(outs: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {t: factor * (k + 1) * o.float().pow(2).mean() for k, (t, o) in enumerate(outs.items())}


def _precision_update(
    method: Weighting, model: TinyHPS, x: torch.Tensor, precision: Precision, factor: float
) -> torch.Tensor:
    """One step as the Trainer takes it: forward under the precision's autocast, the method's
    backward at its loss scale, then unscaling (``Precision.step``, learning rate 0)."""
    model.zero_grad()
    with precision.autocast():
        outs, rep = model.forward_with_representation(x)
    losses = _losses(outs, factor)
    method.backward(losses, model, representation=rep, loss_scale=precision.loss_scale())
    precision.step(torch.optim.SGD(model.parameters(), lr=0.0), model.parameters())
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("build", [mlp_model, cnn_model], ids=["mlp", "cnn"])
@pytest.mark.parametrize(("name", "mode"), MODES)
@pytest.mark.parametrize("half", ["bf16", "fp16_scaled"])
def test_half_precision_update_equals_float32(name: str, mode: str, build, half: str) -> None:
    """Every gradient method in every mode, two steps, under bf16 autocast (no scaling) and
    under fp16 autocast with a GradScaler (2¹⁶; the CUDA recipe, run here on the CPU): the
    update after unscaling equals the float32 update of the same model and losses.

    The losses are scaled by 1e-5 in the fp16 case: unscaled, the per-task gradients inside
    the half-precision backward then fall below fp16's smallest number (6e-8) and flush to 0
    (the update was 20 % off before the per-task passes were seeded at the loss scale); at the
    loss scale they do not. Methods whose update does not shrink with the gradients (Nash-MTL,
    FairGrad, DB-MTL) overflow fp16 at 2¹⁶: the scaler skips the step and halves the scale, as
    in training, until the step goes through. Nash-MTL and FairGrad weigh the losses by about
    1/‖gᵢ‖², so their weighted loss's gradients are about 1/‖gᵢ‖: at 1e-5 those exceed fp16's
    range at every scale in mode last_shared; they keep the losses unscaled.

    What remains is half-precision rounding of the forward and backward (unit roundoff 3.9e-3
    for bf16, 4.9e-4 for fp16; measured 3e-3 to 6e-3 of the update's norm in bf16, 3e-4 to
    6e-4 in fp16): the bound, 3e-2, is five times the largest, and far below the change a
    lost task or a solver in half precision makes."""
    model, x = build()
    model, x = model.float(), x.float()
    reference = copy.deepcopy(model)
    if half == "bf16":
        precision, factor = Precision(CPU, torch.bfloat16), 1.0
    else:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        precision, factor = Precision(CPU, torch.float16, scaler), INVERSE.get(name, 1e-5)
    method, twin = _make_mode(name, mode), _make_mode(name, mode)
    for _ in range(2):
        want = _precision_update(twin, reference, x, Precision(CPU), factor)
        for _ in range(16):  # the GradScaler's protocol: an overflowed step is skipped, and
            saved = copy.deepcopy(method)  # taken again at half the scale
            scale = precision.loss_scale()
            got = _precision_update(method, model, x, precision, factor)
            if precision.scaler is None or precision.loss_scale() >= scale:
                break
            method = saved
        assert bool(torch.isfinite(got).all())
        assert float((got - want).norm()) <= 3e-2 * float(want.norm())
