"""Properties every projection / manipulation method promises (see projection_helpers.METHODS)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting import WEIGHTINGS, get
from mtlkit.weighting.gradient import JACOBIAN_MODES, GradientWeighting
from tests.weighting.projection_helpers import (
    DETERMINISTIC_ORDER,
    METHODS,
    build,
    explicit_jacobian,
    losses_of,
    shared_grad,
    tiny_model,
)
from tests.weighting.samplers import HARD_CASES, random_jacobian

NAMES = list(METHODS)


@pytest.mark.parametrize("name", NAMES)
def test_registered_under_lower_case_name(name: str) -> None:
    method = get(name)
    assert name in WEIGHTINGS and name == name.lower()
    assert isinstance(method, GradientWeighting)
    assert repr(method).startswith(type(method).__name__ + "(")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(HARD_CASES))
@pytest.mark.parametrize("t", [2, 5, 10])
def test_finite_on_hard_cases(name: str, case: str, t: int) -> None:
    jac = HARD_CASES[case](t, 12, seed=t)
    method = build(name, t)
    for _ in range(2):  # the second step uses the state the first one left
        update = method.aggregate(jac)
        assert update.shape == (12,)
        assert torch.isfinite(update).all()


@pytest.mark.parametrize("name", NAMES)
def test_zero_jacobian_gives_zero_update(name: str) -> None:
    update = build(name, 3).aggregate(torch.zeros(3, 7, dtype=torch.float64))
    assert torch.equal(update, torch.zeros(7, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 4, 10])
def test_identical_rows_give_t_times_g(name: str, t: int) -> None:
    """The scale convention: T identical task gradients g give T·g, as equal weighting does."""
    g = random_jacobian(1, 9, seed=3)[0]
    jac = g.expand(t, -1).clone()
    method = build(name, t)
    for _ in range(3):
        torch.testing.assert_close(method.aggregate(jac), t * g, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", DETERMINISTIC_ORDER)
@pytest.mark.parametrize("t", [3, 6])
def test_permutation_equivariant(name: str, t: int) -> None:
    """Reordering the tasks does not change the update (over several stateful steps)."""
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(t))
    plain, permuted = build(name, t), build(name, t)
    for step in range(3):
        jac = random_jacobian(t, 11, seed=10 + step)
        torch.testing.assert_close(plain.aggregate(jac), permuted.aggregate(jac[perm]))


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_two_task_methods_with_random_order_are_permutation_equivariant(name: str) -> None:
    """With two tasks the random order has one choice, so PCGrad and GradVac are equivariant."""
    plain, swapped = build(name, 2), build(name, 2)
    for step in range(3):
        jac = random_jacobian(2, 11, seed=20 + step)
        torch.testing.assert_close(plain.aggregate(jac), swapped.aggregate(jac.flip(0)))


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_aggregate_on_explicit_jacobian(name: str) -> None:
    """``backward`` on a model writes the update ``aggregate`` gives on the explicit J."""
    model, batch = tiny_model(num_tasks=3)
    via_backward, via_aggregate = get(name), get(name)
    for _ in range(2):
        model.zero_grad()
        losses, _ = losses_of(model, batch)
        jac = explicit_jacobian(losses, list(model.shared_parameters()))
        if name == "gradnorm":
            via_aggregate.observe_losses(torch.stack(list(losses.values())))
        expected = via_aggregate.aggregate(jac)
        via_backward.backward(losses, model)
        torch.testing.assert_close(shared_grad(model), expected, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # move the model so the second step sees new gradients
            for p in model.parameters():
                p -= 0.1 * p.grad


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_identically(name: str) -> None:
    """A method restored from state_dict makes the same next updates as the original."""
    t = 4
    original = build(name, t)
    original.bind([f"t{i}" for i in range(t)])
    for step in range(3):
        original.aggregate(random_jacobian(t, 8, seed=step))
    state = original.state_dict()
    for value in state.values():  # tensors or plain JSON values: nothing to pickle
        assert value is None or isinstance(value, torch.Tensor | int | float | str | list)
    restored = get(name)
    restored.load_state_dict(state)
    if name == "gradnorm":
        restored.observe_losses(torch.ones(t, dtype=torch.float64))
    assert restored.tasks == original.tasks
    for step in range(3, 6):
        jac = random_jacobian(t, 8, seed=step)
        torch.testing.assert_close(restored.aggregate(jac), original.aggregate(jac))


@pytest.mark.parametrize("name", NAMES)
def test_reset_starts_over(name: str) -> None:
    t = 4
    jacs = [random_jacobian(t, 8, seed=s) for s in range(3)]
    method = build(name, t)
    first = [method.aggregate(j) for j in jacs]
    method.reset()
    if name == "gradnorm":
        method.observe_losses(torch.ones(t, dtype=torch.float64))
    torch.testing.assert_close([method.aggregate(j) for j in jacs], first)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("pcgrad", {"seed": -1}, "PCGrad: option 'seed'"),
        ("pcgrad", {"seed": 1.5}, "PCGrad: option 'seed'"),
        ("graddrop", {"leak": 1.5}, "GradDrop: option 'leak'"),
        ("graddrop", {"leak": -0.1}, "GradDrop: option 'leak'"),
        ("graddrop", {"leak": {"a": 2.0}}, r"GradDrop: option 'leak\['a'\]'"),
        ("graddrop", {"seed": True}, "GradDrop: option 'seed'"),
        ("gradvac", {"beta": 0.0}, "GradVac: option 'beta'"),
        ("gradvac", {"beta": 1.5}, "GradVac: option 'beta'"),
        ("gradvac", {"beta": float("nan")}, "GradVac: option 'beta'"),
        ("moco", {"beta": 0.0}, "MoCo: option 'beta'"),
        ("moco", {"beta_sigma": -1.0}, "MoCo: option 'beta_sigma'"),
        ("moco", {"gamma": 0.0}, "MoCo: option 'gamma'"),
        ("moco", {"gamma_sigma": -0.5}, "MoCo: option 'gamma_sigma'"),
        ("moco", {"rho": -1.0}, "MoCo: option 'rho'"),
        ("gradnorm", {"alpha": -1.0}, "GradNorm: option 'alpha'"),
        ("gradnorm", {"lr": 0.0}, "GradNorm: option 'lr'"),
        ("gradnorm", {"lr": "fast"}, "GradNorm: option 'lr'"),
        ("aligned_mtl", {"jacobian": "everything"}, "option 'jacobian'"),
        ("config", {"update_every": 0}, "option 'update_every'"),
    ],
)
def test_bad_options_raise_config_error(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get(name, **options)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        get(name, not_an_option=1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", JACOBIAN_MODES)
def test_backward_in_every_jacobian_mode(name: str, mode: str) -> None:
    """Every mode of the engine (and weight reuse) gives finite shared gradients."""
    model, batch = tiny_model(num_tasks=3, seed=2)
    method = get(name, jacobian=mode, update_every=2)
    for _ in range(3):
        model.zero_grad()
        losses, rep = losses_of(model, batch)
        record = method.backward(losses, model, representation=rep)
        assert set(record.weights) == {"t0", "t1", "t2"}
        assert torch.isfinite(shared_grad(model)).all()
