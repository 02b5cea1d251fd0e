"""Which tasks to train together: the best choice of at most k multi-task models.

Standley et al. 2020, "Which Tasks Should Be Learned Together in Multi-task Learning?" (ICML)
frame it as choosing up to k groups of tasks (one model each; groups may overlap) so that
every task is served by the chosen group that does best on it, maximising the total. Fifty et
al. 2021, "Efficiently Identifying Task Groupings for Multi-Task Learning" (TAG, NeurIPS)
score a group from the inter-task affinity Z(i→j) alone, without training it: the score of
group G for task j ∈ G is the mean affinity onto j from the other members,

    s(G, j) = 1/(|G| − 1) · Σ_{i ∈ G, i ≠ j} Z(i→j),      s({j}, j) = 0,

and the value of a choice of groups is Σ_j max_{G chosen, G ∋ j} s(G, j).

Exhaustive search (``exact_up_to`` tasks, 12 by default): each task is served by one group, so the
served sets partition the tasks into at most k blocks, and a block S is best served by

    v(S) = max_{G ⊇ S} Σ_{j ∈ S} s(G, j)

(a group may contain helper tasks it does not serve). The optimum is the best partition into
at most k blocks of Σ v(S), found by dynamic programming over subsets: O(3^T) for v and
O(k·3^T) for the partition. This is the optimum of the group-selection problem *for the
affinity matrix given*; the matrix itself is an estimate from a few noisy steps, so the answer
is only as good as :func:`grouping_robustness` says (never call it "exact").

Robustness (:func:`grouping_robustness`): the search is repeated on bootstrap resamples of the
measured steps (Efron & Tibshirani 1993, "An Introduction to the Bootstrap": draw as many steps
as were measured, with replacement, and average them into a new affinity matrix). The share of
resamples that give the chosen grouping is its *frequency*; the share in which tasks i and j are
trained in a common model is the *pair-together* matrix. A frequency near 1 means the noise of
the measurement cannot move the answer; near 1/(number of plausible groupings) means the data
do not decide it.

Beyond that, a documented heuristic (deviation from Standley's branch and bound, which is
exponential too): start from singletons, greedily merge the two blocks whose union raises the
total most until at most k blocks remain (merging while it helps), then move single tasks
between blocks while that improves the total. Groups are then the blocks (no helper tasks).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtlkit.errors import ConfigError


@dataclass
class Grouping:
    """A chosen set of groups: ``groups[g]`` are the tasks model g is trained on, ``serves[g]``
    those it serves (best for them); ``scores[task]`` the score of the group serving it."""

    groups: list[list[str]]
    serves: list[list[str]]
    scores: dict[str, float]
    total: float
    exhaustive: bool  # True: the optimum for this matrix (exhaustive search); False: heuristic

    @property
    def search(self) -> str:
        """``"exhaustive search"`` or ``"heuristic search"``: how the grouping was found."""
        return "exhaustive search" if self.exhaustive else "heuristic search"

    def key(self) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
        """A canonical form: two groupings are the same when their keys are equal."""
        pairs = zip(self.groups, self.serves, strict=True)
        return tuple(sorted((tuple(sorted(g)), tuple(sorted(s))) for g, s in pairs))

    def to_json(self) -> dict[str, object]:
        return {
            "groups": self.groups,
            "serves": self.serves,
            "scores": self.scores,
            "total": self.total,
            "search": self.search,
        }


def group_score(affinity: np.ndarray, members: Sequence[int], task: int) -> float:
    """s(G, j): the mean affinity Z(i→j) onto ``task`` from the other ``members`` (0 alone)."""
    others = [i for i in members if i != task]
    if not others:
        return 0.0
    return float(np.mean([affinity[i, task] for i in others]))


def total_value(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Σ_j max over the groups containing j of s(G, j); −inf when some task is in no group."""
    n = affinity.shape[0]
    best = np.full(n, -np.inf)
    for g in groups:
        for j in g:
            best[j] = max(best[j], group_score(affinity, g, j))
    return float(best.sum())


def _check(affinity: np.ndarray, k: int) -> np.ndarray:
    a = np.asarray(affinity, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ConfigError(f"group: the affinity must be a square matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ConfigError("group: the affinity matrix has non-finite entries")
    n = a.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(
            f"group: option 'models' (k) must be between 1 and the number of tasks ({n}), got {k}"
        )
    return a


def _block_values(a: np.ndarray) -> tuple[list[float], list[int]]:
    """v(S) and the best superset G for every non-empty subset S (bit masks)."""
    n = a.shape[0]
    full = 1 << n
    members = [[i for i in range(n) if m >> i & 1] for m in range(full)]
    # per group G: score vector s(G, j) for j in G
    score = np.zeros((full, n))
    for g in range(1, full):
        mem = members[g]
        if len(mem) > 1:
            col = a[mem][:, mem]  # col[x, y] = Z(mem[x] → mem[y])
            sums = col.sum(axis=0) - np.diag(col)
            score[g, mem] = sums / (len(mem) - 1)
    value = [-np.inf] * full
    arg = [0] * full
    for g in range(1, full):
        row = score[g].tolist()
        subsets = []
        sub = g
        while sub:
            subsets.append(sub)
            sub = (sub - 1) & g
        sums = {0: 0.0}
        for sub in reversed(subsets):  # increasing: sub without its lowest bit comes first
            low = sub & -sub
            v = sums[sub ^ low] + row[low.bit_length() - 1]
            sums[sub] = v
            if v > value[sub]:
                value[sub], arg[sub] = v, g
    return value, arg


def best_grouping_exact(affinity: np.ndarray, k: int, tasks: Sequence[str]) -> Grouping:
    """The optimal choice of at most ``k`` groups for this matrix, by exhaustive search (see
    the module docstring)."""
    a = _check(affinity, k)
    n = a.shape[0]
    full = (1 << n) - 1
    value, arg = _block_values(a)
    # dp[c][mask]: best Σ v over a partition of mask into c blocks
    dp = np.full((k + 1, full + 1), -np.inf)
    choice = np.zeros((k + 1, full + 1), dtype=np.int64)
    dp[0][0] = 0.0
    for c in range(1, k + 1):
        for mask in range(1, full + 1):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            while True:
                block = sub | low
                v = dp[c - 1][mask ^ block] + value[block]
                if v > dp[c][mask]:
                    dp[c][mask], choice[c][mask] = v, block
                if sub == 0:
                    break
                sub = (sub - 1) & rest
    c = int(np.argmax([dp[c][full] for c in range(k + 1)]))
    blocks, mask = [], full
    while mask:
        block = int(choice[c][mask])
        blocks.append(block)
        mask ^= block
        c -= 1
    groups = [[i for i in range(n) if int(arg[b]) >> i & 1] for b in blocks]
    serves = [[i for i in range(n) if b >> i & 1] for b in blocks]
    return _result(a, groups, serves, tasks, exhaustive=True)


def best_grouping_heuristic(affinity: np.ndarray, k: int, tasks: Sequence[str]) -> Grouping:
    """Greedy merging then single-task moves (see the module docstring); no optimality proof."""
    a = _check(affinity, k)
    n = a.shape[0]
    blocks: list[list[int]] = [[i] for i in range(n)]

    def value(bs: Sequence[Sequence[int]]) -> float:
        return total_value(a, [b for b in bs if b])

    while len(blocks) > 1:
        current = value(blocks)
        best: tuple[float, int, int] | None = None
        for x, y in itertools.combinations(range(len(blocks)), 2):
            merged = [b for i, b in enumerate(blocks) if i not in (x, y)]
            merged.append(blocks[x] + blocks[y])
            gain = value(merged) - current
            if best is None or gain > best[0]:
                best = (gain, x, y)
        assert best is not None
        if best[0] <= 0 and len(blocks) <= k:
            break
        _, x, y = best
        blocks = [b for i, b in enumerate(blocks) if i not in (x, y)] + [blocks[x] + blocks[y]]
    improved = True
    while improved:
        improved = False
        current = value(blocks)
        for t in range(n):
            src = next(i for i, b in enumerate(blocks) if t in b)
            for dst in range(len(blocks)):
                if dst == src:
                    continue
                trial = [list(b) for b in blocks]
                trial[src].remove(t)
                trial[dst].append(t)
                if value(trial) > current + 1e-12:
                    blocks, improved = [b for b in trial if b], True
                    break
            if improved:
                break
    blocks = [sorted(b) for b in blocks]
    return _result(a, blocks, blocks, tasks, exhaustive=False)


def _result(
    a: np.ndarray,
    groups: list[list[int]],
    serves: list[list[int]],
    tasks: Sequence[str],
    exhaustive: bool,
) -> Grouping:
    scores = {}
    for g, s in zip(groups, serves, strict=True):
        for j in s:
            scores[tasks[j]] = group_score(a, g, j)
    order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), groups[i]))
    return Grouping(
        groups=[[tasks[i] for i in groups[o]] for o in order],
        serves=[[tasks[i] for i in serves[o]] for o in order],
        scores=scores,
        total=float(sum(scores.values())),
        exhaustive=exhaustive,
    )


def best_grouping(
    affinity: np.ndarray, k: int, tasks: Sequence[str], exact_up_to: int = 12
) -> Grouping:
    """At most ``k`` groups of ``tasks`` maximising the total score under ``affinity``
    (``affinity[i][j]`` = Z(i→j)): exhaustive search up to ``exact_up_to`` tasks, heuristic
    beyond."""
    a = np.asarray(affinity, dtype=float)
    if len(tasks) != a.shape[0]:
        raise ConfigError(
            f"group: {len(tasks)} task names for an affinity matrix of shape {a.shape}"
        )
    if len(tasks) <= exact_up_to:
        return best_grouping_exact(a, k, tasks)
    return best_grouping_heuristic(a, k, tasks)


@dataclass
class Robustness:
    """How stable a grouping is under resampling of the measured steps.

    ``grouping``: the grouping of the mean affinity; ``frequency``: the share of bootstrap
    resamples whose best grouping is that one; ``pair_together[i][j]``: the share in which
    tasks i and j are trained in a common model (1 on the diagonal); ``alternatives``: every
    grouping found, most frequent first, as (groups, serves, share)."""

    tasks: list[str]
    grouping: Grouping
    frequency: float
    pair_together: np.ndarray
    resamples: int
    steps: int
    alternatives: list[tuple[list[list[str]], list[list[str]], float]]

    def to_json(self) -> dict[str, object]:
        return {
            "frequency": self.frequency,
            "pair_together": self.pair_together.tolist(),
            "tasks": self.tasks,
            "resamples": self.resamples,
            "steps": self.steps,
            "alternatives": [
                {"groups": g, "serves": s, "share": share} for g, s, share in self.alternatives
            ],
        }

    def describe(self) -> str:
        """One sentence: how often the bootstrap gives this grouping, and what that means."""
        share = f"{self.frequency * 100:.0f} % of {self.resamples} bootstrap resamples"
        if self.frequency >= 0.95:
            verdict = "robust: the measurement noise does not change it"
        elif self.frequency >= 0.7:
            verdict = (
                "fairly robust; the pairs whose pair-together share is far from 0 and 1 are "
                "the unsure ones"
            )
        else:
            verdict = (
                "not robust: the measurement cannot decide between groupings; measure more steps"
            )
        return f"chosen in {share} of the {self.steps} measured steps: {verdict}"


def grouping_robustness(
    samples: np.ndarray,
    k: int,
    tasks: Sequence[str],
    *,
    resamples: int = 200,
    seed: int = 0,
    exact_up_to: int = 12,
) -> Robustness:
    """Bootstrap the grouping over the measured steps (see the module docstring).

    ``samples`` holds the per-step affinities, steps × T × T (``Affinity.samples(measure)``).
    The chosen grouping is :func:`best_grouping` of their mean; each of ``resamples`` resamples
    draws as many steps with replacement (``numpy`` generator seeded with ``seed``), averages
    them and searches again."""
    x = np.asarray(samples, dtype=float)
    n = len(tasks)
    if x.ndim != 3 or x.shape[1:] != (n, n):
        raise ConfigError(
            f"group: the per-step affinities must be steps × {n} × {n} for {n} tasks, "
            f"got shape {x.shape}"
        )
    if x.shape[0] < 2:
        raise ConfigError(
            f"group: robustness needs at least two measured steps, got {x.shape[0]}; "
            "measure more steps with `mtlkit affinity`"
        )
    if resamples < 1:
        raise ConfigError(f"group: option 'resamples' must be ≥ 1, got {resamples}")
    chosen = best_grouping(x.mean(axis=0), k, tasks, exact_up_to)
    rng = np.random.default_rng(seed)
    index = {t: i for i, t in enumerate(tasks)}
    together = np.zeros((n, n))
    counts: dict[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...], int] = {}
    found: dict[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...], Grouping] = {}
    for _ in range(resamples):
        draw = x[rng.integers(0, x.shape[0], size=x.shape[0])].mean(axis=0)
        g = best_grouping(draw, k, tasks, exact_up_to)
        key = g.key()
        counts[key] = counts.get(key, 0) + 1
        found.setdefault(key, g)
        shared = np.zeros((n, n), dtype=bool)
        for members in g.groups:
            idx = [index[t] for t in members]
            shared[np.ix_(idx, idx)] = True
        together += shared
    order = sorted(counts, key=lambda c: -counts[c])
    return Robustness(
        tasks=list(tasks),
        grouping=chosen,
        frequency=counts.get(chosen.key(), 0) / resamples,
        pair_together=together / resamples,
        resamples=resamples,
        steps=int(x.shape[0]),
        alternatives=[(found[c].groups, found[c].serves, counts[c] / resamples) for c in order],
    )
