"""Task samplers: the frequencies each produces, reproducibility, state."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mtlkit.data.samplers import TASK_SAMPLERS, Annealed, build_sampler
from mtlkit.errors import ConfigError, RegistryError

SIZES = {"a": 8000, "b": 1000, "c": 125}
BATCHES = {"a": 250, "b": 32, "c": 4}
DRAWS = 10_000


def counts(name: str, draws: int = DRAWS, epochs: int = 1, **params: object) -> Counter[str]:
    sampler = build_sampler({"name": name, **params}, seed=3)
    sampler.setup(SIZES, BATCHES, epochs)
    return Counter(sampler.draw() for _ in range(draws))


def assert_frequencies(got: Counter[str], p: dict[str, float], draws: int = DRAWS) -> None:
    """Each count within 5 binomial standard deviations of its expectation."""
    for task, prob in p.items():
        sd = math.sqrt(draws * prob * (1 - prob))
        assert abs(got[task] - draws * prob) <= 5 * sd + 1e-9, (task, got[task], draws * prob)


def test_all_six_samplers_are_registered() -> None:
    assert set(TASK_SAMPLERS.names()) >= {
        "round_robin",
        "sequential",
        "proportional",
        "temperature",
        "annealed",
        "uniform",
    }


def test_uniform_frequencies() -> None:
    assert_frequencies(counts("uniform"), dict.fromkeys(SIZES, 1 / 3))


def test_proportional_frequencies() -> None:
    total = sum(SIZES.values())
    assert_frequencies(counts("proportional"), {t: n / total for t, n in SIZES.items()})


@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_temperature_frequencies(tau: float) -> None:
    w = {t: n ** (1 / tau) for t, n in SIZES.items()}
    assert_frequencies(
        counts("temperature", tau=tau), {t: v / sum(w.values()) for t, v in w.items()}
    )


def test_temperature_interpolates_between_proportional_and_uniform() -> None:
    def p(tau: float) -> list[float]:
        s = build_sampler({"name": "temperature", "tau": tau})
        s.setup(SIZES, BATCHES)
        return s.probabilities().tolist()

    prop = build_sampler("proportional")
    prop.setup(SIZES, BATCHES)
    assert p(1.0) == pytest.approx(prop.probabilities().tolist())
    assert p(1e9) == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert p(2.0)[2] < p(5.0)[2]  # the small task gains as τ grows


def test_annealed_alpha_schedule_and_frequencies() -> None:
    sampler = Annealed()
    sampler.setup(SIZES, BATCHES, epochs=5)
    alphas = [sampler.alpha(e) for e in range(5)]
    assert alphas == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])  # α = 1 − 0.8 (e − 1)/(E − 1)
    sampler.start_epoch(4)
    got = Counter(sampler.draw() for _ in range(DRAWS))
    w = {t: n**0.2 for t, n in SIZES.items()}
    assert_frequencies(got, {t: v / sum(w.values()) for t, v in w.items()})
    single = Annealed()
    single.setup(SIZES, BATCHES, epochs=1)
    assert single.alpha() == 1.0


def test_round_robin_exact_counts_and_order() -> None:
    sampler = build_sampler("round_robin")
    sampler.setup(SIZES, BATCHES)
    draws = [sampler.draw() for _ in range(10)]
    assert draws == ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a"]
    assert counts("round_robin", draws=DRAWS) == {"a": 3334, "b": 3333, "c": 3333}


def test_sequential_is_task_by_task_with_each_task_s_batches() -> None:
    sampler = build_sampler("sequential")
    sampler.setup(SIZES, BATCHES)
    draws = [sampler.draw() for _ in range(sum(BATCHES.values()))]
    assert draws == ["a"] * 250 + ["b"] * 32 + ["c"] * 4
    sampler.start_epoch(1)
    assert sampler.draw() == "a"  # every epoch starts again at the first task
    assert sampler.probabilities().tolist() == pytest.approx([250 / 286, 32 / 286, 4 / 286])


def test_draws_are_reproducible_per_epoch_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = build_sampler("uniform", seed=7), build_sampler("uniform", seed=7)
    a.setup(SIZES, BATCHES)
    b.setup(SIZES, BATCHES)
    first = [a.draw() for _ in range(50)]
    assert first == [b.draw() for _ in range(50)]
    a.start_epoch(1)
    second = [a.draw() for _ in range(50)]
    assert second != first
    b.start_epoch(1)  # an epoch's draws depend on (seed, epoch) only: resume is exact
    assert [b.draw() for _ in range(50)] == second
    assert torch.equal(torch.random.get_rng_state(), before)


def test_state_dict_restores_a_sampler_mid_epoch() -> None:
    a = build_sampler("proportional", seed=1)
    a.setup(SIZES, BATCHES)
    for _ in range(17):
        a.draw()
    state = a.state_dict()
    assert state["generator"].dtype == torch.uint8 and state["position"] == 17
    want = [a.draw() for _ in range(40)]
    b = build_sampler("proportional", seed=1)
    b.setup(SIZES, BATCHES)
    b.load_state_dict(state)
    assert [b.draw() for _ in range(40)] == want


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "temperature", "tau": 0}, "Temperature: option 'tau' must be a number > 0"),
        ({"name": "annealed", "decay": 1.5}, "Annealed: option 'decay' must be in"),
        ({"name": "uniform", "seed": -1}, "Uniform: option 'seed' must be an integer"),
        ({"tau": 2}, "a mapping needs a 'name'"),
    ],
)
def test_bad_options(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_sampler(spec)


def test_unknown_sampler_and_empty_task() -> None:
    with pytest.raises(RegistryError, match="unknown task sampler 'nope'"):
        build_sampler("nope")
    with pytest.raises(ConfigError, match="task 'b' has an empty training set"):
        build_sampler("uniform").setup({"a": 3, "b": 0}, {"a": 1, "b": 0})
