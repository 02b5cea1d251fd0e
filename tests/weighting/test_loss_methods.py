"""The loss-based weighting methods: SI, UW, DWA, RLW, GLS, IMTL-L, DB-MTL, FAMO, STCH, ExcessMTL.

Closed-form cases and properties (scale invariance, fixed points, permutation equivariance,
equal tasks ⇒ common direction), option validation, and exact resumption from a state dict
that went through a checkpoint's JSON + safetensors split.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn import ENCODERS, build_model
from mtlkit.tasks import Task
from mtlkit.weighting import (
    DBMTL,
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    SI,
    STCH,
    UW,
    ExcessMTL,
    Weighting,
    available,
    get,
)

TASKS = ("a", "b", "c")
NAMES = ("si", "uw", "dwa", "rlw", "gls", "imtl_l", "db_mtl", "famo", "stch", "excess_mtl")
#: options that make each method's state matter within a few steps
FAST: dict[str, dict[str, Any]] = {
    "stch": {"warmup_epochs": 1},
    "famo": {"lr": 0.1},
    "excess_mtl": {"step_size": 0.5},
    "db_mtl": {"beta_sigma": 0.5},
}


def make(name: str) -> Weighting:
    return get(name, **FAST.get(name, {}))


# ---------------------------------------------------------------------------- a toy model


class Toy(nn.Module):
    """θ shared; task t: L_t = s_t · mean((X_t θ + b_t − y_t)²) + c_t, b_t its own parameter.

    The data belong to the task *name*, so building the losses in another order permutes them.
    """

    SCALES: ClassVar[dict[str, float]] = {"a": 1.0, "b": 10.0, "c": 0.1}

    def __init__(self, p: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(torch.randn(p, generator=g, dtype=torch.float64))
        self.bias = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros((), dtype=torch.float64)) for t in TASKS}
        )
        self.data = {
            t: (
                torch.randn(7, p, generator=g, dtype=torch.float64),
                torch.randn(7, generator=g, dtype=torch.float64),
                0.1 * (i + 1),
            )
            for i, t in enumerate(TASKS)
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.theta]

    def loss(self, task: str, theta: Tensor | None = None) -> Tensor:
        x, y, c = self.data[task]
        th = self.theta if theta is None else theta
        return self.SCALES[task] * ((x @ th + self.bias[task] - y) ** 2).mean() + c

    def losses(self, order: Sequence[str] = TASKS) -> dict[str, Tensor]:
        return {t: self.loss(t) for t in order}


def drive(
    method: Weighting, order: Sequence[str], steps: int, model: Toy | None = None
) -> tuple[list[dict[str, float]], Toy]:
    """Train the toy model with SGD (method parameters included); an epoch is two steps."""
    model = model or Toy()
    method.bind(list(order))
    opt = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.02)
    records = []
    for k in range(steps):
        opt.zero_grad()
        losses = model.losses(order)
        records.append(method.backward(losses, model).weights)
        opt.step()
        if k % 2 == 1:
            method.on_epoch_end(k // 2, {t: losses[t].item() + 0.01 * k for t in order})
    return records, model


def through_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """Split a state dict as checkpoints do (tensors → safetensors, the rest → JSON) and back."""
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    return {**json.loads(json.dumps(rest)), **st_load(st_save(tensors))}


# ---------------------------------------------------------------------------- registry, options


def test_every_method_is_registered_and_built_by_name() -> None:
    classes = [SI, UW, DWA, RLW, GLS, IMTLL, DBMTL, FAMO, STCH, ExcessMTL]
    for name, cls in zip(NAMES, classes, strict=True):
        assert name in available()
        method = get(name)
        assert type(method) is cls
        assert repr(method).startswith(cls.__name__ + "(")


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("dwa", {"temperature": 0}, "temperature"),
        ("dwa", {"temperature": -2.0}, "temperature"),
        ("rlw", {"seed": -1}, "seed"),
        ("rlw", {"seed": 1.5}, "seed"),
        ("uw", {"init_log_var": math.nan}, "init_log_var"),
        ("imtl_l", {"init_scale": math.inf}, "init_scale"),
        ("famo", {"lr": 0.0}, "lr"),
        ("famo", {"gamma": -0.1}, "gamma"),
        ("stch", {"mu": 0.0}, "mu"),
        ("stch", {"warmup_epochs": 0}, "warmup_epochs"),
        ("db_mtl", {"beta": 1.0}, "beta"),
        ("db_mtl", {"beta": -0.1}, "beta"),
        ("db_mtl", {"beta_sigma": -1}, "beta_sigma"),
        ("excess_mtl", {"step_size": 0}, "step_size"),
        ("excess_mtl", {"step_size": "big"}, "step_size"),
    ],
)
def test_bad_options_are_config_errors_naming_method_and_option(
    name: str, options: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^\w+: option '{option}' must be"):
        get(name, **options)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="temprature"):
        get("dwa", temprature=2.0)


@pytest.mark.parametrize("name", ["si", "gls", "famo", "stch", "db_mtl"])
def test_non_positive_loss_is_a_task_data_error_naming_the_task(name: str) -> None:
    model = Toy()
    losses = model.losses()
    losses["b"] = losses["b"] * 0 - 1.0
    with pytest.raises(TaskDataError, match="task 'b'"):
        make(name).backward(losses, model)


@pytest.mark.parametrize("cls", [UW, IMTLL])
def test_learnable_scales_need_the_tasks_before_the_optimiser(cls: type[Weighting]) -> None:
    method = cls()
    with pytest.raises(ConfigError, match="bind"):
        method.parameters()
    method.bind(TASKS)
    (param,) = method.parameters()
    assert param.shape == (3,) and param.requires_grad


# ---------------------------------------------------------------------------- shared properties


def shared_grad_of(name: str, losses_of: Callable[[Toy], dict[str, Tensor]]) -> tuple[Tensor, Toy]:
    method, model = make(name), Toy()
    method.backward(losses_of(model), model)
    assert model.theta.grad is not None
    return model.theta.grad.clone(), model


@pytest.mark.parametrize("name", NAMES)
def test_equal_tasks_give_an_update_along_the_common_gradient(name: str) -> None:
    """Identical losses (so identical gradients): the update is a positive multiple of it."""
    grad, model = shared_grad_of(name, lambda m: {t: m.loss("b") for t in TASKS})
    (common,) = torch.autograd.grad(model.loss("b"), model.theta)
    cosine = torch.dot(grad, common) / (grad.norm() * common.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "rlw"])
def test_weights_are_permutation_equivariant(name: str) -> None:
    """Listing the tasks in another order permutes the weights with them (by task name)."""
    first, model_1 = drive(make(name), ["a", "b", "c"], steps=8)
    second, model_2 = drive(make(name), ["c", "a", "b"], steps=8)
    for w1, w2 in zip(first, second, strict=True):
        for t in TASKS:
            assert w2[t] == pytest.approx(w1[t], rel=1e-9, abs=1e-12)
    torch.testing.assert_close(model_1.theta, model_2.theta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).stateful])
def test_resumed_run_continues_exactly(name: str) -> None:
    """State through a checkpoint round trip: the continued run equals the uninterrupted one."""
    method = make(name)
    _, model = drive(method, TASKS, steps=5)
    state = through_checkpoint(method.state_dict())
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    straight, _ = drive(method, TASKS, steps=5, model=model)

    resumed_method = make(name)
    resumed_method.load_state_dict(state)
    resumed_model = Toy()
    resumed_model.load_state_dict(snapshot)
    resumed, _ = drive(resumed_method, TASKS, steps=5, model=resumed_model)
    assert resumed == straight
    assert straight[0] != straight[-1], "the state should have changed the weights"


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).stateful])
def test_reset_forgets_the_training_state(name: str) -> None:
    method = make(name)
    fresh, _ = drive(method, TASKS, steps=5)
    method.reset()
    again, _ = drive(method, TASKS, steps=5)
    assert again == fresh


# ---------------------------------------------------------------------------- SI, GLS


def test_si_update_is_invariant_to_loss_scaling() -> None:
    base, _ = shared_grad_of("si", lambda m: m.losses())
    scaled, _ = shared_grad_of(
        "si", lambda m: {t: c * m.loss(t) for t, c in zip(TASKS, (1e-3, 7.0, 250.0), strict=True)}
    )
    torch.testing.assert_close(scaled, base, rtol=1e-10, atol=1e-12)
    ew, _ = shared_grad_of(
        "ew", lambda m: {t: c * m.loss(t) for t, c in zip(TASKS, (1, 7, 9), strict=True)}
    )
    assert not torch.allclose(ew, base * 3)  # EW is not scale invariant: the test can tell


def test_si_weights_are_inverse_losses() -> None:
    model = Toy()
    record = SI().backward(model.losses(), model)
    for t in TASKS:
        assert record.weights[t] == pytest.approx(1 / model.loss(t).item())


def test_gls_gradient_closed_form() -> None:
    """∇ (Π L_i)^(1/T) = (GLS/T) Σ_i ∇L_i / L_i."""
    grad, model = shared_grad_of("gls", lambda m: m.losses())
    losses = model.losses()
    gls = math.prod(v.item() for v in losses.values()) ** (1 / 3)
    expected = sum(torch.autograd.grad(losses[t], model.theta)[0] / losses[t].item() for t in TASKS)
    torch.testing.assert_close(grad, gls / 3 * expected, rtol=1e-10, atol=1e-12)
    record = GLS().backward(model.losses(), model)
    assert sum(record.weights[t] * losses[t].item() for t in TASKS) == pytest.approx(gls)


# ---------------------------------------------------------------------------- UW, IMTL-L


def test_uw_log_variance_gradient_and_closed_form_minimiser() -> None:
    uw = UW(init_log_var=0.3)
    uw.bind(TASKS)
    losses = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    objective, weights = uw.combine(losses)
    objective.backward()
    s = torch.full((3,), 0.3)
    torch.testing.assert_close(uw.log_vars.grad, 0.5 * (1 - torch.exp(-s) * losses.float()))
    torch.testing.assert_close(weights, 0.5 * torch.exp(-s).double())
    # minimising over s with the losses fixed lands on σ² = e^s = L
    opt = torch.optim.LBFGS(uw.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = uw.combine(losses)[0]
        value.backward()
        return value

    opt.step(closure)
    torch.testing.assert_close(uw.log_vars.detach().exp().double(), losses, rtol=1e-4, atol=0)


def test_imtl_l_scales_converge_to_unit_scaled_losses() -> None:
    method = IMTLL()
    method.bind(TASKS)
    losses = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    objective, weights = method.combine(losses)
    objective.backward()
    torch.testing.assert_close(method.scales.grad, losses.float() - 1)  # e^0 L − 1
    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))
    opt = torch.optim.Adam(method.parameters(), lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        method.combine(losses)[0].backward()
        opt.step()
    scaled = method.scales.detach().double().exp() * losses
    torch.testing.assert_close(scaled, torch.ones(3, dtype=torch.float64), rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------- DWA


def test_dwa_weights_from_hand_computed_history() -> None:
    dwa = DWA()  # temperature 2
    losses = torch.ones(2)
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2))
    dwa.on_epoch_end(0, {"a": 2.0, "b": 4.0})
    torch.testing.assert_close(dwa.weights(losses), torch.ones(2))  # still only one epoch
    dwa.on_epoch_end(1, {"a": 1.0, "b": 3.2})
    # r = (0.5, 0.8); w = 2 e^{r/2} / Σ e^{r/2}
    ea, eb = math.exp(0.25), math.exp(0.4)
    expected = torch.tensor([2 * ea / (ea + eb), 2 * eb / (ea + eb)])
    torch.testing.assert_close(dwa.weights(losses), expected)
    assert dwa.weights(losses).sum().item() == pytest.approx(2.0)
    dwa.on_epoch_end(2, {"b": 1.6, "a": 0.1})  # only the last two epochs count: r = (0.1, 0.5)
    ea, eb = math.exp(0.05), math.exp(0.25)
    torch.testing.assert_close(
        dwa.weights(losses), torch.tensor([2 * ea / (ea + eb), 2 * eb / (ea + eb)])
    )


def test_dwa_temperature_limits() -> None:
    history = [{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.9}]  # b falls slowest
    hot, cold = DWA(temperature=1e6), DWA(temperature=1e-3)
    for epoch, means in enumerate(history):
        hot.on_epoch_end(epoch, means)
        cold.on_epoch_end(epoch, means)
    torch.testing.assert_close(hot.weights(torch.ones(2)), torch.ones(2))
    torch.testing.assert_close(cold.weights(torch.ones(2)), torch.tensor([0.0, 2.0]))


def test_dwa_rejects_bad_epoch_losses() -> None:
    dwa = DWA()
    dwa.on_epoch_end(0, {"a": 1.0, "b": 1.0})
    with pytest.raises(TaskDataError, match="task 'b'"):
        dwa.on_epoch_end(1, {"a": 1.0, "b": math.nan})
    with pytest.raises(TaskDataError, match="missing task"):
        dwa.on_epoch_end(1, {"a": 1.0})


# ---------------------------------------------------------------------------- RLW


def test_rlw_weights_are_reproducible_from_the_seed_and_leave_global_rng_alone() -> None:
    losses = torch.ones(4)
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    first = [RLW(seed=7).weights(losses)]
    same = RLW(seed=7)
    draws = [same.weights(losses) for _ in range(3)]
    assert torch.equal(torch.rand(3), expected_global)
    torch.testing.assert_close(draws[0], first[0], rtol=0, atol=0)
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(RLW(seed=8).weights(losses), first[0])
    for w in draws:
        assert (w > 0).all() and w.sum().item() == pytest.approx(4.0)
    # the paper's distribution: softmax of standard normal draws, times T
    g = torch.Generator().manual_seed(7)
    paper = 4 * torch.softmax(torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    torch.testing.assert_close(first[0], paper.float())


def test_rlw_weights_do_not_depend_on_the_losses() -> None:
    a = RLW(seed=3).weights(torch.tensor([1.0, 2.0, 3.0]))
    b = RLW(seed=3).weights(torch.tensor([30.0, 0.2, 1e-3]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rlw_state_round_trip_restores_the_generator_exactly() -> None:
    method = RLW(seed=11)
    losses = torch.ones(3)
    for _ in range(5):
        method.weights(losses)
    state = through_checkpoint(method.state_dict())
    straight = [method.weights(losses) for _ in range(4)]
    other = RLW(seed=99)
    other.load_state_dict(state)
    resumed = [other.weights(losses) for _ in range(4)]
    for s, r in zip(straight, resumed, strict=True):
        torch.testing.assert_close(r, s, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="generator"):
        other.load_state_dict({**state, "generator": [1, 2, 3]})


# ---------------------------------------------------------------------------- FAMO


def test_famo_first_step_weights_and_update() -> None:
    """z uniform at the start: w_i = (1/L_i) / Σ_j (1/L_j), and d = Σ_i w_i ∇L_i."""
    grad, model = shared_grad_of("famo", lambda m: m.losses())
    losses = model.losses()
    inv = torch.tensor([1 / losses[t].item() for t in TASKS], dtype=torch.float64)
    w = inv / inv.sum()
    expected = sum(
        w[i] * torch.autograd.grad(losses[t], model.theta)[0] for i, t in enumerate(TASKS)
    )
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_famo_raises_the_weight_of_the_task_that_improves_least() -> None:
    famo = FAMO(lr=0.05)
    famo.bind(["fast", "slow"])
    first = famo.combine(torch.tensor([1.0, 1.0], dtype=torch.float64))[1]
    assert first[0].item() == pytest.approx(first[1].item())
    for k in range(1, 6):  # the 'fast' loss halves each step, the 'slow' one barely moves
        famo.combine(torch.tensor([0.5**k, 0.99**k], dtype=torch.float64))
    assert famo.logits is not None
    z = torch.softmax(famo.logits, dim=0)
    assert z[1] > z[0]
    # δ of the first ξ step: z ⊙ (p − z·p) with p the log-loss decrease, here (log 2, ~0)
    fresh = FAMO(lr=0.05, gamma=0.0)
    fresh.bind(["fast", "slow"])
    fresh.update_logits(
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.99], dtype=torch.float64),
    )
    assert fresh.logits is not None
    # Adam's first step moves each coordinate by lr · sign(δ)
    p = torch.tensor([math.log(2), -math.log(0.99)], dtype=torch.float64)
    delta = 0.5 * (p - p.mean())
    torch.testing.assert_close(fresh.logits, -0.05 * delta.sign(), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------- STCH


def test_stch_warms_up_with_si_then_smooths_the_max_of_normalised_log_losses() -> None:
    stch = STCH(mu=0.5, warmup_epochs=2)
    stch.bind(TASKS)
    losses = torch.tensor([0.4, 3.0, 0.05], dtype=torch.float64, requires_grad=True)
    objective, weights = stch.combine(losses)
    assert objective.item() == pytest.approx(losses.log().sum().item())
    torch.testing.assert_close(weights, 1 / losses.detach())
    stch.on_epoch_end(0, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert stch.nadir is None
    nadir = {"a": 0.8, "b": 2.0, "c": 0.1}
    stch.on_epoch_end(1, nadir)
    assert stch.nadir == [0.8, 2.0, 0.1]
    objective, weights = stch.combine(losses)
    f = [math.log(v / nadir[t]) for v, t in zip(losses.tolist(), TASKS, strict=True)]
    assert objective.item() == pytest.approx(3 * 0.5 * math.log(sum(math.exp(x / 0.5) for x in f)))
    (grad,) = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(grad, weights)
    assert sum((weights * losses.detach()).tolist()) == pytest.approx(3.0)  # T · Σ p_i


def test_stch_small_mu_concentrates_on_the_worst_normalised_task() -> None:
    stch = STCH(mu=1e-3, warmup_epochs=1)
    stch.on_epoch_end(0, {"a": 1.0, "b": 10.0, "c": 0.1})
    _, weights = stch.combine(torch.tensor([0.5, 9.0, 0.2], dtype=torch.float64))
    # normalised: 0.5, 0.9, 2.0 → task c is the worst off
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.0, 3 / 0.2], dtype=torch.float64))


# ---------------------------------------------------------------------------- DB-MTL


def test_db_mtl_two_steps_by_hand() -> None:
    """ĝ ← β_k ĝ + (1 − β_k) ∇log L, update Σ_i (max‖ĝ‖/‖ĝ_i‖) ĝ_i; heads get ∇log L_i."""
    beta, sigma = 0.8, 0.5
    method, model = DBMTL(beta=beta, beta_sigma=sigma), Toy()
    average = torch.zeros(3, 5, dtype=torch.float64)
    for k in (1, 2):
        model.zero_grad()
        losses = model.losses()
        log_grads = torch.stack(
            [
                torch.autograd.grad((losses[t] + 1e-8).log(), model.theta, retain_graph=True)[0]
                for t in TASKS
            ]
        )
        head_grads = [
            torch.autograd.grad((losses[t] + 1e-8).log(), model.bias[t], retain_graph=True)[0]
            for t in TASKS
        ]
        record = method.backward(losses, model)
        beta_k = beta / k**sigma
        average = beta_k * average + (1 - beta_k) * log_grads
        norms = average.norm(dim=1)
        alpha = norms.max() / norms
        torch.testing.assert_close(model.theta.grad, alpha @ average, rtol=1e-6, atol=1e-12)
        for t, g in zip(TASKS, head_grads, strict=True):
            torch.testing.assert_close(model.bias[t].grad, g)
        assert [record.weights[t] for t in TASKS] == pytest.approx(alpha.tolist(), rel=1e-6)
        with torch.no_grad():
            model.theta -= 0.05 * model.theta.grad
    # every task contributes a vector of the largest norm
    contributions = (alpha.unsqueeze(1) * average).norm(dim=1)
    torch.testing.assert_close(contributions, contributions.max().expand(3))


# ---------------------------------------------------------------------------- ExcessMTL


def test_excess_mtl_weight_update_by_hand() -> None:
    eta = 0.3
    method, model = ExcessMTL(step_size=eta), Toy()
    sq_sum = torch.zeros(3, 5, dtype=torch.float64)
    log_w = torch.zeros(3, dtype=torch.float64)
    initial = None
    for _ in range(3):
        model.zero_grad()
        losses = model.losses()
        jac = torch.stack(
            [torch.autograd.grad(losses[t], model.theta, retain_graph=True)[0] for t in TASKS]
        )
        record = method.backward(losses, model)
        sq_sum += jac**2
        excess = (jac**2 / (sq_sum + 1e-7).sqrt()).sum(dim=1)
        if initial is None:
            initial = excess
        else:
            log_w += eta * excess / initial
        w = 3 * torch.softmax(log_w, dim=0)
        torch.testing.assert_close(model.theta.grad, w @ jac, rtol=1e-7, atol=1e-12)
        assert [record.weights[t] for t in TASKS] == pytest.approx(w.tolist(), rel=1e-7)
        with torch.no_grad():
            model.theta -= 0.05 * model.theta.grad
    assert sum(record.weights.values()) == pytest.approx(3.0)
    assert len(set(record.weights.values())) == 3  # the weights moved apart


def test_excess_mtl_zero_first_estimate_waits_for_a_positive_one() -> None:
    method = ExcessMTL(step_size=1.0)
    method.bind(["a", "b"])
    jac = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    method.aggregate(jac)
    method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    w = method.last_weights()
    assert w is not None and torch.isfinite(w).all()
    assert method.initial_excess is not None and (method.initial_excess > 0).all()


# ---------------------------------------------------------------------------- with a real model


@pytest.mark.parametrize("name", ["famo", "excess_mtl", "db_mtl", "uw"])
def test_hps_training_resumes_exactly(name: str) -> None:
    """A tiny HPS model trained with Adam: interrupt, checkpoint, resume, same trajectory."""
    tasks = [Task("a", "regression", 1), Task("b", "regression", 1)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)
    y = {"a": torch.randn(16, 1, generator=g), "b": 5 * torch.randn(16, 1, generator=g)}

    def build() -> tuple[nn.Module, Weighting, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model("hps", ENCODERS.build("mlp", 6, hidden=[8]), tasks)
        method = make(name)
        method.bind(["a", "b"])
        opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-2)
        return model, method, opt

    def train(model: nn.Module, method: Weighting, opt: torch.optim.Optimizer, steps: int) -> list:
        out = []
        for _ in range(steps):
            opt.zero_grad()
            pred = model(x)
            losses = {t: torch.nn.functional.mse_loss(pred[t], y[t]) for t in ("a", "b")}
            out.append(method.backward(losses, model).weights)
            opt.step()
        return out

    model, method, opt = build()
    train(model, method, opt, 4)
    saved_model = copy.deepcopy(model.state_dict())
    saved_method = through_checkpoint(method.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    straight = train(model, method, opt, 4)

    model2, method2, opt2 = build()
    model2.load_state_dict(saved_model)
    method2.load_state_dict(saved_method)
    opt2.load_state_dict(saved_opt)
    resumed = train(model2, method2, opt2, 4)
    assert resumed == straight
