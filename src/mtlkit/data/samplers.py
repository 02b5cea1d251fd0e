"""Task samplers: which task's batch comes next when each task has its own dataset.

A sampler is told each task's dataset size (examples) and number of batches per epoch
(:meth:`TaskSampler.setup`), then draws one task per step (:meth:`TaskSampler.draw`). The
random ones draw from a ``torch.Generator`` of their own, re-seeded at the start of every
epoch from ``(seed, epoch)``: a resumed run draws exactly what the uninterrupted one would,
DDP ranks built with the same seed agree, and the global random state is left alone. The
state (:meth:`TaskSampler.state_dict`: the generator's uint8 tensor and two integers) also
restores a sampler in the middle of an epoch.

With n_i the number of training examples of task i and b_i its batches per epoch:

- ``uniform``: p_i = 1/T;
- ``proportional``: p_i = n_i / Σ_j n_j;
- ``temperature``: p_i ∝ n_i^(1/τ) (Arivazhagan et al. 2019);
- ``annealed``: p_i ∝ n_i^α, α = 1 − 0.8 (e − 1)/(E − 1) at epoch e of E (Stickland & Murray
  2019);
- ``round_robin``: deterministic, t_1, t_2, ..., t_T, t_1, ...;
- ``sequential``: deterministic, b_1 steps of task 1, then b_2 of task 2, ... (each epoch).

:meth:`TaskSampler.probabilities` gives every sampler's per-epoch task frequencies.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.registry import Registry

TASK_SAMPLERS: Registry[type[TaskSampler]] = Registry("task sampler")

__all__ = [
    "TASK_SAMPLERS",
    "Annealed",
    "Proportional",
    "RoundRobin",
    "Sequential",
    "TaskSampler",
    "Temperature",
    "Uniform",
    "build_sampler",
]

#: mixes the epoch into the seed so that every epoch has its own stream
_EPOCH_STRIDE = 1_000_003


class TaskSampler(ABC):
    """Base class: draws the task of each step. Random samplers draw from
    :meth:`probabilities`; deterministic ones override :meth:`draw`."""

    name: ClassVar[str] = "sampler"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{type(self).__name__}: option 'seed' must be an integer ≥ 0")
        self.seed = seed
        self.generator = torch.Generator()
        self.tasks: list[str] = []
        self.sizes: dict[str, int] = {}
        self.batches: dict[str, int] = {}
        self.epochs = 1
        self.epoch = 0
        self.position = 0  # draws made in the current epoch

    def setup(self, sizes: Mapping[str, int], batches: Mapping[str, int], epochs: int = 1) -> None:
        """Each task's number of examples and of batches per epoch, and the run's epochs."""
        if not sizes:
            raise ConfigError(f"{self}: no task to sample from")
        for task, n in sizes.items():
            if n < 1 or batches.get(task, 0) < 1:
                raise ConfigError(f"{self}: task '{task}' has an empty training set")
        if epochs < 1:
            raise ConfigError(f"{self}: epochs must be ≥ 1, got {epochs}")
        self.tasks = list(sizes)
        self.sizes = {t: int(n) for t, n in sizes.items()}
        self.batches = {t: int(batches[t]) for t in self.tasks}
        self.epochs = int(epochs)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based): re-seeds the generator."""
        self.epoch = int(epoch)
        self.position = 0
        self.generator.manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)

    @abstractmethod
    def probabilities(self) -> Tensor:
        """p(task) for the current epoch, in task order (float64, sums to 1); for the
        deterministic samplers, the share of the steps each task gets."""

    def draw(self) -> str:
        """The task of the next step."""
        p = self.probabilities()
        index = int(torch.multinomial(p, 1, generator=self.generator))
        self.position += 1
        return self.tasks[index]

    def _check_setup(self) -> None:
        if not self.tasks:
            raise ConfigError(f"{self}: call setup(sizes, batches) before drawing")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The generator state (uint8 tensor), the epoch and the draws made in it."""
        return {
            "generator": self.generator.get_state().clone(),
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        gen = state.get("generator")
        if not isinstance(gen, Tensor) or gen.dtype != torch.uint8:
            raise ConfigError(f"{self}: state 'generator' must be the uint8 tensor it saved")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.generator.set_state(gen.detach().cpu().clone())

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def __str__(self) -> str:
        return type(self).__name__


def _power(sizes: Mapping[str, int], tasks: list[str], exponent: float) -> Tensor:
    n = torch.tensor([sizes[t] for t in tasks], dtype=torch.float64)
    w = torch.exp(exponent * (n.log() - n.log().max()))  # n^a, scaled to avoid overflow
    return w / w.sum()


@TASK_SAMPLERS.register("uniform")
class Uniform(TaskSampler):
    """Every task with probability 1/T, whatever its dataset size."""

    name = "uniform"

    def probabilities(self) -> Tensor:
        self._check_setup()
        return torch.full((len(self.tasks),), 1.0 / len(self.tasks), dtype=torch.float64)


@TASK_SAMPLERS.register("proportional")
class Proportional(TaskSampler):
    """p_i ∝ n_i: every training example is seen about equally often, so large tasks
    dominate (Sanh, Wolf & Ruder 2019, "A Hierarchical Multi-task Approach for Learning
    Embeddings from Semantic Tasks", AAAI; the usual choice of MT-DNN-style training)."""

    name = "proportional"

    def probabilities(self) -> Tensor:
        self._check_setup()
        return _power(self.sizes, self.tasks, 1.0)


@TASK_SAMPLERS.register("temperature")
class Temperature(TaskSampler):
    """p_i ∝ n_i^(1/τ): τ = 1 is proportional, τ → ∞ uniform.

    Arivazhagan, Bapna, Firat, Lepikhin, Johnson, Krikun, Chen, Cao, Foster, Cherry, Macherey,
    Chen & Wu (2019), "Massively Multilingual Neural Machine Translation in the Wild: Findings
    and Challenges", arXiv:1907.05019, whose preferred setting is τ = 5 (the default).
    """

    name = "temperature"

    def __init__(self, tau: float = 5.0, seed: int = 0) -> None:
        super().__init__(seed)
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
            raise ConfigError(f"Temperature: option 'tau' must be a number > 0, got {tau!r}")
        if not math.isfinite(tau):
            raise ConfigError(f"Temperature: option 'tau' must be finite, got {tau!r}")
        self.tau = float(tau)

    def probabilities(self) -> Tensor:
        self._check_setup()
        return _power(self.sizes, self.tasks, 1.0 / self.tau)

    def hyperparameters(self) -> dict[str, Any]:
        return {"tau": self.tau, "seed": self.seed}


@TASK_SAMPLERS.register("annealed")
class Annealed(TaskSampler):
    """Annealed sampling: p_i ∝ n_i^α with α = 1 − 0.8 (e − 1)/(E − 1) at epoch e = 1..E.

    Stickland & Murray (2019), "BERT and PALs: Projected Attention Layers for Efficient
    Adaptation in Multi-Task Learning", ICML 2019: sampling starts proportional to the dataset
    sizes (α = 1) and becomes more uniform (α = 0.2 in the last epoch), so small tasks are not
    forgotten at the end of training. With E = 1, α = 1 throughout. ``decay`` is the paper's
    0.8.
    """

    name = "annealed"

    def __init__(self, decay: float = 0.8, seed: int = 0) -> None:
        super().__init__(seed)
        bad = isinstance(decay, bool) or not isinstance(decay, int | float)
        if bad or not 0.0 <= decay <= 1.0:
            raise ConfigError(f"Annealed: option 'decay' must be in [0, 1], got {decay!r}")
        self.decay = float(decay)

    def alpha(self, epoch: int | None = None) -> float:
        """α at ``epoch`` (0-based; the current epoch by default)."""
        e = self.epoch if epoch is None else epoch
        if self.epochs == 1:
            return 1.0
        return 1.0 - self.decay * min(e, self.epochs - 1) / (self.epochs - 1)

    def probabilities(self) -> Tensor:
        self._check_setup()
        return _power(self.sizes, self.tasks, self.alpha())

    def hyperparameters(self) -> dict[str, Any]:
        return {"decay": self.decay, "seed": self.seed}


@TASK_SAMPLERS.register("round_robin")
class RoundRobin(TaskSampler):
    """The tasks in turn, t_1, t_2, ..., t_T, t_1, ... (restarting at t_1 every epoch):
    over S steps each task gets ⌊S/T⌋ or ⌈S/T⌉ of them, whatever its size."""

    name = "round_robin"

    def probabilities(self) -> Tensor:
        self._check_setup()
        return torch.full((len(self.tasks),), 1.0 / len(self.tasks), dtype=torch.float64)

    def draw(self) -> str:
        self._check_setup()
        task = self.tasks[self.position % len(self.tasks)]
        self.position += 1
        return task

    def hyperparameters(self) -> dict[str, Any]:
        return {}


@TASK_SAMPLERS.register("sequential")
class Sequential(TaskSampler):
    """Task by task: each epoch takes all of task 1's batches, then all of task 2's, and so
    on (b_i batches of task i; past Σ b_i steps it starts over at task 1)."""

    name = "sequential"

    def probabilities(self) -> Tensor:
        self._check_setup()
        b = torch.tensor([self.batches[t] for t in self.tasks], dtype=torch.float64)
        return b / b.sum()

    def draw(self) -> str:
        self._check_setup()
        k = self.position % sum(self.batches.values())
        self.position += 1
        for task in self.tasks:
            if k < self.batches[task]:
                return task
            k -= self.batches[task]
        raise AssertionError("unreachable: k < Σ b_i")  # pragma: no cover

    def hyperparameters(self) -> dict[str, Any]:
        return {}


def build_sampler(spec: str | Mapping[str, Any] | TaskSampler, seed: int = 0) -> TaskSampler:
    """A sampler from a name, a mapping ``{name: ..., **options}`` or an instance; a random
    sampler without its own ``seed`` gets ``seed`` (the run's)."""
    if isinstance(spec, TaskSampler):
        return spec
    if isinstance(spec, str):
        params: dict[str, Any] = {}
        name = spec
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"task sampler: a mapping needs a 'name', got {dict(spec)}")
    else:
        raise ConfigError(f"task sampler: expected a name or a mapping, got {spec!r}")
    params.setdefault("seed", seed)
    return TASK_SAMPLERS.build(name, **params)
