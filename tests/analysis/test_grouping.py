"""Task grouping: the exact search against brute force, the heuristic, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtlkit.analysis import (
    best_grouping,
    best_grouping_exact,
    best_grouping_heuristic,
    group_score,
    grouping_robustness,
    total_value,
)
from mtlkit.errors import ConfigError


def brute_force(a: np.ndarray, k: int) -> float:
    """Every collection of at most k distinct non-empty groups that covers every task."""
    n = a.shape[0]
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    best = -np.inf
    for c in range(1, k + 1):
        for chosen in itertools.combinations(subsets, c):
            if set().union(*chosen) == set(range(n)):
                best = max(best, total_value(a, chosen))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n,k", [(3, 1), (3, 2), (4, 2), (4, 3), (5, 2)])
def test_exact_search_equals_brute_force(seed: int, n: int, k: int) -> None:
    a = np.random.default_rng(seed).normal(size=(n, n))
    names = [f"t{i}" for i in range(n)]
    result = best_grouping_exact(a, k, names)
    assert result.total == pytest.approx(brute_force(a, k))
    assert len(result.groups) <= k
    served = sorted(t for s in result.serves for t in s)
    assert served == names  # every task served exactly once
    index = {t: i for i, t in enumerate(names)}
    groups = [[index[t] for t in g] for g in result.groups]
    assert total_value(a, groups) == pytest.approx(result.total)


def test_score_is_the_mean_affinity_onto_the_task() -> None:
    a = np.array([[0.0, 0.2, -0.4], [0.6, 0.0, 0.1], [0.3, 0.5, 0.0]])
    assert group_score(a, [0, 1, 2], 0) == pytest.approx((0.6 + 0.3) / 2)
    assert group_score(a, [0, 2], 2) == pytest.approx(-0.4)
    assert group_score(a, [1], 1) == 0.0


def test_two_cliques_are_found() -> None:
    # tasks 0,1,2 help each other, 3,4 help each other, across the cliques they hurt
    a = -np.ones((5, 5))
    a[np.ix_([0, 1, 2], [0, 1, 2])] = 1.0
    a[np.ix_([3, 4], [3, 4])] = 1.0
    names = list("abcde")
    for result in (best_grouping(a, 2, names), best_grouping_heuristic(a, 2, names)):
        assert sorted(map(sorted, result.groups)) == [["a", "b", "c"], ["d", "e"]]
        assert result.total == pytest.approx(5.0)
    one = best_grouping(a, 1, names)
    assert one.groups == [names]  # one model: everything together


def test_a_helper_task_can_be_trained_without_being_served() -> None:
    # c helps a a lot but is hurt by a; with 2 models, c is best served alone and a trains
    # with c as a helper
    a = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    result = best_grouping_exact(a, 2, ["a", "b", "c"])
    assert result.total == pytest.approx(2.0)
    pairs = zip(result.groups, result.serves, strict=True)
    assert any("c" in g and "a" in s and "c" not in s for g, s in pairs)


@pytest.mark.parametrize("seed", range(4))
def test_heuristic_is_valid_and_never_beats_the_optimum(seed: int) -> None:
    a = np.random.default_rng(seed).normal(size=(6, 6))
    names = [f"t{i}" for i in range(6)]
    exact = best_grouping_exact(a, 3, names)
    heur = best_grouping_heuristic(a, 3, names)
    assert len(heur.groups) <= 3
    assert sorted(t for g in heur.groups for t in g) == names
    assert heur.total <= exact.total + 1e-9
    assert not heur.exhaustive and exact.exhaustive
    # beyond exact_up_to, best_grouping switches to the heuristic
    assert not best_grouping(a, 3, names, exact_up_to=5).exhaustive


def test_bad_k_and_shapes_are_config_errors() -> None:
    a = np.zeros((3, 3))
    with pytest.raises(ConfigError, match=r"'models' \(k\) must be between 1 and the number"):
        best_grouping(a, 4, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="between 1"):
        best_grouping(a, 0, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="2 task names"):
        best_grouping(a, 1, ["a", "b"])
    with pytest.raises(ConfigError, match="non-finite"):
        best_grouping(np.full((2, 2), np.nan), 1, ["a", "b"])


# ---------------------------------------------------------------------------- robustness


def two_cliques() -> np.ndarray:
    a = -np.ones((4, 4))
    a[np.ix_([0, 1], [0, 1])] = 1.0
    a[np.ix_([2, 3], [2, 3])] = 1.0
    return a


def test_a_noiseless_clear_cut_affinity_is_fully_robust() -> None:
    samples = np.repeat(two_cliques()[None], 20, axis=0)
    r = grouping_robustness(samples, 2, list("abcd"), resamples=50, seed=0)
    assert r.frequency == 1.0
    assert sorted(map(sorted, r.grouping.groups)) == [["a", "b"], ["c", "d"]]
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    assert np.array_equal(r.pair_together, expected)
    assert len(r.alternatives) == 1 and r.alternatives[0][2] == 1.0
    assert "robust" in r.describe() and "not robust" not in r.describe()


def test_a_noisy_ambiguous_affinity_is_not_robust() -> None:
    # every pair helps about equally (mean 0.1) under noise of size 1: no grouping is favoured
    rng = np.random.default_rng(3)
    samples = 0.1 + rng.normal(size=(30, 4, 4))
    r = grouping_robustness(samples, 2, list("abcd"), resamples=200, seed=0)
    assert r.frequency < 0.7
    assert "not robust" in r.describe()
    assert len(r.alternatives) > 1
    shares = [share for _, _, share in r.alternatives]
    assert sum(shares) == pytest.approx(1.0) and shares == sorted(shares, reverse=True)

    def key(groups: list[list[str]], serves: list[list[str]]) -> list:
        return sorted((sorted(g), sorted(s)) for g, s in zip(groups, serves, strict=True))

    mine = key(r.grouping.groups, r.grouping.serves)
    match = [share for g, s, share in r.alternatives if key(g, s) == mine]
    assert (match[0] if match else 0.0) == r.frequency  # the frequency is that grouping's share
    assert np.allclose(r.pair_together, r.pair_together.T)
    assert np.all(np.diag(r.pair_together) == 1.0)
    assert 0 < r.pair_together[0, 1] < 1
    # seeded: the same answer twice
    again = grouping_robustness(samples, 2, list("abcd"), resamples=200, seed=0)
    assert again.frequency == r.frequency


def test_robustness_rejects_bad_samples() -> None:
    with pytest.raises(ConfigError, match="steps × 3 × 3"):
        grouping_robustness(np.zeros((5, 2, 2)), 1, list("abc"))
    with pytest.raises(ConfigError, match="at least two measured steps"):
        grouping_robustness(np.zeros((1, 3, 3)), 1, list("abc"))


def test_the_answer_says_exhaustive_search_never_exact() -> None:
    g = best_grouping(two_cliques(), 2, list("abcd"))
    assert g.to_json()["search"] == "exhaustive search"
    assert "exact" not in g.to_json()
