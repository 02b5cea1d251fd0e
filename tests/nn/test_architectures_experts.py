"""Mixture-of-experts architectures: gates are distributions; closed-form special cases
(MMoE with one expert is a shared-bottom model, PLE with one level is CGC); DSelect-k's smooth
step, binary selection of at most k experts, differentiability and entropy term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mtlkit.nn.architectures import (
    CGC,
    PLE,
    DSelectGate,
    DSelectK,
    HardParameterSharing,
    MMoE,
    build_model,
    smooth_step,
)
from mtlkit.nn.encoders import MLPEncoder
from tests.nn._architectures import (
    ENCODER_KINDS,
    losses_of,
    make_encoder,
    make_inputs,
    make_model,
    make_tasks,
    one_thread,  # noqa: F401  (autouse fixture)
)


def assert_distribution(weights: Tensor, size: int) -> None:
    assert weights.shape[-1] == size
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


# ------------------------------------------------------------------------ gates are distributions


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_mmoe_gates_are_distributions_over_the_experts(kind: str) -> None:
    model = make_model("mmoe", kind, n_tasks=3, num_experts=4)
    gates = model.gate_weights(make_inputs(kind))
    assert set(gates) == {"a", "b", "c"}
    for g in gates.values():
        assert_distribution(g, 4)


def test_cgc_gates_cover_own_and_shared_experts() -> None:
    model = make_model("cgc", num_shared_experts=2, num_task_experts=3)
    for g in model.gate_weights(make_inputs("mlp")).values():
        assert_distribution(g, 3 + 2)


def test_ple_task_and_shared_gates_are_distributions() -> None:
    model = make_model("ple", n_tasks=3, num_levels=3, num_shared_experts=2, num_task_experts=1)
    levels = model.gate_weights(make_inputs("mlp"))
    assert len(levels) == 3
    for j, level in enumerate(levels):
        for g in level.tasks.values():
            assert_distribution(g, 1 + 2)
        if j < 2:
            assert level.shared is not None
            assert_distribution(level.shared, 2 + 3 * 1)  # shared + every task's experts
        else:
            assert level.shared is None  # the top level has no shared gate


@pytest.mark.parametrize("per_example", [True, False])
@pytest.mark.parametrize("num_experts", [1, 4, 5])
def test_dselect_k_gates_are_distributions(per_example: bool, num_experts: int) -> None:
    k = min(2, num_experts)
    model = make_model("dselect_k", num_experts=num_experts, k=k, per_example=per_example)
    for g in model.gate_weights(make_inputs("mlp")).values():
        assert_distribution(g, num_experts)


# ------------------------------------------------------------------------ closed-form special cases


def test_mmoe_with_one_expert_is_a_shared_bottom_model() -> None:
    torch.manual_seed(0)
    tasks = make_tasks(2)
    mmoe = MMoE(make_encoder("mlp"), tasks, num_experts=1, expert_hidden=(7, 5))
    trunk = nn.Sequential(mmoe.encoder, mmoe.experts.experts[0])
    trunk.out_features = 5
    hps = HardParameterSharing(trunk, tasks)
    hps.heads.load_state_dict(mmoe.heads.state_dict())
    x = make_inputs("mlp")
    expected, got = hps(x), mmoe(x)
    for name in ("a", "b"):
        torch.testing.assert_close(got[name], expected[name])
    # and the gradients of the shared parameters agree
    for model in (hps, mmoe):
        model.zero_grad()
        sum(o.square().sum() for o in model(x).values()).backward()
    for p, q in zip(hps.encoder.parameters(), trunk.parameters(), strict=True):
        assert p is q and p.grad is not None


def test_ple_with_one_level_is_cgc() -> None:
    torch.manual_seed(0)
    tasks = make_tasks(2)
    cgc = CGC(make_encoder("mlp"), tasks, num_shared_experts=2, num_task_experts=1)
    ple = PLE(make_encoder("mlp"), tasks, num_levels=1, num_shared_experts=2, num_task_experts=1)
    state = {k.replace("level.", "levels.0.", 1): v for k, v in cgc.state_dict().items()}
    ple.load_state_dict(state)
    x = make_inputs("mlp")
    for name, out in cgc(x).items():
        torch.testing.assert_close(ple(x)[name], out)


def test_cgc_output_is_the_gated_sum_of_own_and_shared_experts() -> None:
    torch.manual_seed(0)
    model = make_model("cgc", num_shared_experts=2, num_task_experts=1)
    assert isinstance(model, CGC)
    x = make_inputs("mlp")
    rep = model.encoder(x)
    level = model.level
    for name in model.task_names:
        experts = [e(rep) for e in level.task_experts[name].experts]
        experts += [e(rep) for e in level.shared_experts.experts]
        w = torch.softmax(rep @ level.gates[name].linear.weight.T, dim=-1)
        fused = sum(w[:, i : i + 1] * e for i, e in enumerate(experts))
        torch.testing.assert_close(model(x)[name], model.heads[name](fused))


# ------------------------------------------------------------------------ DSelect-k


@pytest.mark.parametrize("gamma", [0.5, 1.0, 4.0])
def test_smooth_step_is_a_c1_step_from_0_to_1(gamma: float) -> None:
    t = torch.linspace(-gamma, gamma, 401, dtype=torch.float64, requires_grad=True)
    s = smooth_step(t, gamma)
    (grad,) = torch.autograd.grad(s.sum(), t)
    s = s.detach()
    assert float(s[t <= -gamma / 2].abs().max()) == 0.0
    assert float((s[t >= gamma / 2] - 1).abs().max()) == 0.0
    assert bool((s.diff() >= 0).all())  # monotone
    torch.testing.assert_close(
        smooth_step(torch.zeros((), dtype=torch.float64), gamma),
        torch.tensor(0.5, dtype=torch.float64),
    )
    edge = gamma / 2
    near_edges = (t - edge).abs() < gamma / 200
    assert float(grad[near_edges].abs().max()) < 1e-3 / gamma  # derivative → 0 at ±γ/2
    assert math.isclose(float(grad[200]), 1.5 / gamma)  # S'(0) = 3/(2γ)
    t0 = torch.tensor([-0.2, 0.1, 0.3], dtype=torch.float64, requires_grad=True) * gamma
    assert torch.autograd.gradcheck(
        lambda u: smooth_step(u, gamma), (t0.detach().requires_grad_(),)
    )


def binary_gate(num_experts: int, k: int, codes: list[int], gamma: float = 1.0) -> DSelectGate:
    """A static gate whose k selectors are pushed far outside (−γ/2, γ/2) onto ``codes``."""
    gate = DSelectGate(3, num_experts, k, gamma, per_example=False)
    assert gate.z_static is not None
    with torch.no_grad():
        for i, code in enumerate(codes):
            bits = [(code >> j) & 1 for j in range(gate.bits)]
            gate.z_static[i] = torch.tensor([gamma if b else -gamma for b in bits])
        gate.alpha_static.copy_(torch.randn(k))
    return gate


@pytest.mark.parametrize(
    ("num_experts", "codes", "experts"),
    [
        (8, [5, 2], [5, 2]),
        (8, [3, 3], [3]),
        (5, [6, 1], [1]),  # code 6 wraps to expert 6 mod 5 = 1
        (4, [0, 3, 1], [0, 3, 1]),
    ],
)
def test_dselect_k_selects_at_most_k_experts_once_binary(
    num_experts: int, codes: list[int], experts: list[int]
) -> None:
    k = len(codes)
    gate = binary_gate(num_experts, k, codes)
    weights, selectors = gate(torch.randn(4, 3))
    chosen = sorted({int(i) for i in (weights[0] > 0).nonzero().flatten()})
    assert chosen == sorted(experts) and len(chosen) <= k
    assert_distribution(weights, num_experts)
    torch.testing.assert_close(selectors.amax(-1), torch.ones(4, k))  # one-hot selectors
    mixture = torch.softmax(gate.alpha_static, 0)
    expected = torch.zeros(num_experts)
    for w, code in zip(mixture, codes, strict=True):
        expected[code % num_experts] += w
    torch.testing.assert_close(weights[0], expected.detach())


def test_dselect_k_is_differentiable_in_the_smooth_region_and_frozen_outside() -> None:
    gate = DSelectGate(3, 8, 2, 1.0, per_example=False)
    x = torch.randn(4, 3)
    weights, _ = gate(x)
    (weights[:, 5].sum()).backward()
    assert gate.z_static is not None and gate.z_static.grad is not None
    assert float(gate.z_static.grad.abs().min()) > 0  # every bit of every selector learns
    frozen = binary_gate(8, 2, [5, 2])
    frozen(x)[0][:, 5].sum().backward()
    assert frozen.z_static is not None and frozen.z_static.grad is not None
    assert float(frozen.z_static.grad.abs().max()) == 0.0  # binary selectors: zero gradient
    assert float(frozen.alpha_static.grad.abs().max()) > 0  # the mixture still learns


def test_dselect_k_gate_gradcheck() -> None:
    torch.manual_seed(0)
    gate = DSelectGate(3, 5, 2, 1.0, per_example=True).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: gate(u)[0], (x,))


def test_dselect_k_entropy_regulariser() -> None:
    model = make_model("dselect_k", entropy_reg=0.5, per_example=False)
    assert isinstance(model, DSelectK)
    losses = losses_of(model, "mlp")
    reg = model.regularization()
    # z ≈ 0: each selector is uniform over the 8 codes; codes wrap onto 5 experts, so experts
    # 0-2 get 2/8 and experts 3-4 get 1/8: entropy 3·(1/4)·ln 4 + 2·(1/8)·ln 8 per selector
    per_selector = 0.75 * math.log(4) + 0.25 * math.log(8)
    assert float(reg.detach()) == pytest.approx(0.5 * 2 * model.k * per_selector, rel=1e-3)
    sum(losses.values()).backward()  # frees the task graph ...
    reg.backward()  # ... and the entropy term still back-propagates (its own graph)
    gate = model.gates["a"]
    assert gate.z_static is not None and gate.z_static.grad is not None
    for name in model.task_names:  # binary selectors have zero entropy
        model.gates[name].load_state_dict(binary_gate(5, 2, [1, 4]).state_dict())
    model(make_inputs("mlp"))
    assert float(model.regularization().detach()) == pytest.approx(0.0, abs=1e-9)


def test_dselect_k_without_entropy_term_returns_zero() -> None:
    model = make_model("dselect_k")
    model(make_inputs("mlp"))
    assert float(model.regularization()) == 0.0


def test_mixture_models_accept_a_table_encoder_with_categorical_columns() -> None:
    encoder = MLPEncoder(2, hidden=(6,), cardinalities=(3, 4), embedding_dim=2)
    model = build_model("mmoe", encoder, make_tasks(2), num_experts=2, expert_hidden=(4,))
    inputs = {"numeric": torch.randn(5, 2), "categorical": torch.randint(0, 3, (5, 2))}
    outputs = model(inputs)
    assert outputs["a"].shape == (5, 3)
