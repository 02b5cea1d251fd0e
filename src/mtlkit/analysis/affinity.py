"""Task relatedness measured during a short training run: gradient cosines and TAG affinity.

For every ordered pair of tasks (i, j), on the shared parameters θ:

- the cosine of their gradients, cos(∇L_i, ∇L_j), averaged over the measured steps, and the
  share of those steps where it is negative (the gradients conflict; Yu et al. 2020, "Gradient
  Surgery for Multi-Task Learning", NeurIPS);
- the lookahead inter-task affinity of Fifty et al. 2021, "Efficiently Identifying Task
  Groupings for Multi-Task Learning" (TAG), NeurIPS::

      Z(i→j) = 100 · (1 − L_j(θ − η ∇_θ L_i) / L_j(θ))      (in %)

  on the same batch, averaged over the measured steps: the relative change of task j's loss
  after one step on task i alone, in percent (the paper's Z times 100, so that scores read).
  Z(i→j) > 0: the step lowers task j's loss (i helps j); Z(i→j) < 0: it raises it (i hurts j).

Every score comes with its standard error over the measured steps (:meth:`Affinity.stderr`),
and the per-step values are kept (:meth:`Affinity.samples`) so that a grouping can be
bootstrapped over them (:func:`mtlkit.analysis.grouping.grouping_robustness`). How many steps:
at least ``min_measured`` (30), then until every pair's standard error is at most a quarter
(``rel_stderr``) of the typical score (the root mean square of the off-diagonal means), for
the cosine and the lookahead alike, or ``max_measured`` (200) steps; see
:func:`measure_affinity`.

Both come from one Jacobian J (T × P, row i = ∇_θ L_i) per measured step, taken with one
vectorised backward pass on the graph the training step builds anyway (through the shared
representation when the model exposes one); the cosines are read from G = J Jᵀ. The lookahead
losses need T + 1 forward passes without gradients, with θ − η ∇L_i substituted through
:func:`torch.func.functional_call`, so the model's parameters are never touched. Buffers
(BatchNorm statistics) are cloned for these passes and the random-number state is forked, so
the training run is exactly the one without measurement.

Cost: one batched backward plus T + 1 gradient-free forward passes per measured step. With
``every`` = k (5 by default), only every k-th step is measured, so the overhead per training
step is that divided by k; :class:`Affinity` records the measured seconds next to the training
seconds (``seconds["measure_per_step_vs_train_step"]``; 0.23 for the CNN of
``configs/multidigits.yaml`` with T = 2 and k = 10, i.e. well under one extra step per step).

Deviation from the paper: the lookahead step is the plain gradient step of the TAG formula
with η the optimiser's learning rate (the paper's code can also take the optimiser's own
update, e.g. Adam's); the lookahead forward passes reuse the training mode of the model
(dropout with the same mask for every pass, since the random state is reset before each).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.data.base import to_device
from mtlkit.errors import ConfigError, MissingExtraError, require
from mtlkit.files import atomic_write_text
from mtlkit.tasks import Task
from mtlkit.weighting.gradient import task_jacobian

MEASURES = ("cosine", "conflict", "tag")

#: version of the affinity JSON: 2 stores the lookahead in % and the standard errors; files
#: without a version (1) stored the lookahead as a fraction and no standard errors
FORMAT_VERSION = 2

#: the unit of each measure, saved in the JSON and shown in tables
UNITS = {
    "cosine": "cosine in [-1, 1]",
    "conflict": "share of measured steps with cos < 0",
    "tag": "% change of L_j's loss after a lookahead step on task i (positive: i helps j)",
}


def standard_error(samples: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the first axis: s / √n with the sample standard deviation
    s (n − 1 in the denominator); NaN where fewer than two samples exist."""
    x = np.asarray(samples, dtype=float)
    n = x.shape[0]
    if n < 2:
        return np.full(x.shape[1:], np.nan)
    return np.asarray(x.std(axis=0, ddof=1) / math.sqrt(n))


def is_precise(samples: np.ndarray, rel_stderr: float) -> bool:
    """The stopping rule of :func:`measure_affinity` for one measure (samples: steps × T × T).

    Precise when the largest standard error over the off-diagonal pairs is at most
    ``rel_stderr`` times the scale of the scores, the root mean square of the off-diagonal
    means. Scores that are all near zero have a small scale, so they are precise only when
    their errors are smaller still."""
    x = np.asarray(samples, dtype=float)
    if x.shape[0] < 2:
        return False
    off = ~np.eye(x.shape[1], dtype=bool)
    means = x.mean(axis=0)[off]
    scale = float(np.sqrt(np.mean(means**2)))
    worst = float(standard_error(x)[off].max())
    return scale > 0 and worst <= rel_stderr * scale


def format_estimate(mean: float, stderr: float | None = None) -> str:
    """``+1.23 ± 0.40``: the mean with as many decimals as two significant digits of its
    standard error need; ``+1.23`` (3 significant digits) without one; scientific notation
    for estimates whose error is below 1e-5."""
    if not math.isfinite(mean):
        return "n/a"
    if stderr is None or not math.isfinite(stderr):
        return f"{mean:+.3g}"
    if stderr == 0:
        return f"{mean:+.3g} ± 0"
    if stderr < 1e-5:
        return f"{mean:+.2e} ± {stderr:.1e}"
    decimals = min(6, max(0, 1 - math.floor(math.log10(stderr))))
    return f"{mean:+.{decimals}f} ± {stderr:.{decimals}f}"


@dataclass
class Affinity:
    """Pairwise task relatedness. Matrices are indexed ``[i][j]`` in ``tasks`` order.

    ``cosine[i][j]``: mean gradient cosine, in [-1, 1]; ``conflict[i][j]``: share of measured
    steps with a negative cosine; ``tag[i][j]``: mean lookahead affinity Z(i→j) in % (the
    relative change of task j's loss after a lookahead step on task i; positive: i helps j).
    ``errors[measure]`` holds the standard error of each mean over the measured steps (NaN
    where unknown), ``history`` the per-step cosines and lookahead affinities
    (:meth:`samples`), ``stop`` why measuring stopped (see :func:`measure_affinity`).

    The standard errors treat the measured steps as independent draws; consecutive steps of one
    run are correlated, so they are a lower bound on the error of the estimate (measuring every
    k-th step weakens the correlation).
    """

    tasks: list[str]
    cosine: np.ndarray
    conflict: np.ndarray
    tag: np.ndarray
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    stop: str = ""
    lr: float | None = None

    def matrix(self, measure: str) -> np.ndarray:
        """The matrix of ``measure`` (cosine, conflict or tag)."""
        _check_measure(measure)
        return np.asarray(getattr(self, measure), dtype=float)

    def samples(self, measure: str) -> np.ndarray:
        """The per-step values of ``measure`` (steps × T × T), from :attr:`history`; a
        ConfigError when the history is gone (an affinity saved without it)."""
        _check_measure(measure)
        n = len(self.tasks)
        if not self.history:
            raise ConfigError(
                "affinity: no per-step measurements are stored (the file was written without "
                "its history); measure again with `mtlkit affinity`"
            )
        if measure == "conflict":
            return (self.samples("cosine") < 0).astype(float)
        try:
            x = np.asarray([h[measure] for h in self.history], dtype=float)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"affinity: the history's per-step '{measure}' entries are missing or malformed"
            ) from None
        if x.ndim != 3 or x.shape[1:] != (n, n):
            raise ConfigError(
                f"affinity: the history's per-step '{measure}' entries must be {n}×{n} "
                f"matrices, got shape {x.shape[1:]}"
            )
        return x

    def stderr(self, measure: str) -> np.ndarray:
        """Standard error of :meth:`matrix` over the measured steps (same shape; NaN where it
        cannot be known: one measured step, or an old file without history)."""
        _check_measure(measure)
        if measure in self.errors:
            return self.errors[measure]
        try:
            return standard_error(self.samples(measure))
        except ConfigError:
            return np.full((len(self.tasks), len(self.tasks)), np.nan)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "tasks": self.tasks,
            "units": UNITS,
            "cosine": self.cosine.tolist(),
            "conflict": self.conflict.tolist(),
            "tag": self.tag.tolist(),
            "stderr": {m: _nan_to_none(self.stderr(m)) for m in MEASURES},
            "steps": self.steps,
            "stop": self.stop,
            "lr": self.lr,
            "seconds": self.seconds,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "affinity JSON") -> Affinity:
        """Read what :meth:`to_json` wrote; a malformed file is a ConfigError naming the field.

        Files of earlier versions (no ``version`` field) stored the lookahead as a fraction and
        no standard errors: the lookahead is converted to %, and the errors are computed from
        the stored history when there is one (NaN otherwise)."""
        if not isinstance(data, Mapping) or "tasks" not in data:
            raise ConfigError(f"{where}: expected a mapping with 'tasks' and the matrices")
        tasks = [str(t) for t in data["tasks"]]
        version = data.get("version", 1)
        if version not in (1, FORMAT_VERSION):
            raise ConfigError(
                f"{where}: field 'version' is {version!r}; this mtlkit reads versions 1 and "
                f"{FORMAT_VERSION}"
            )
        scale = 100.0 if version == 1 else 1.0  # version 1: the lookahead as a fraction
        mats = {key: _square(data, key, len(tasks), where) for key in MEASURES}
        mats["tag"] = mats["tag"] * scale
        history = list(data.get("history", []))
        if scale != 1.0:
            history = [
                {**h, "tag": (np.asarray(h["tag"], dtype=float) * scale).tolist()}
                if isinstance(h, Mapping) and "tag" in h
                else h
                for h in history
            ]
        errors = {}
        saved = data.get("stderr")
        if saved is not None:
            if not isinstance(saved, Mapping):
                raise ConfigError(f"{where}: field 'stderr' must map each measure to a matrix")
            errors = {m: _square(saved, m, len(tasks), f"{where}: stderr") for m in saved}
        lr = data.get("lr")
        return cls(
            tasks,
            mats["cosine"],
            mats["conflict"],
            mats["tag"],
            int(data.get("steps", 0)),
            dict(data.get("seconds", {})),
            history,
            errors,
            str(data.get("stop", "")),
            float(lr) if isinstance(lr, int | float) else None,
        )

    @classmethod
    def load(cls, path: str | Path) -> Affinity:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"affinity file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"affinity file {path} is not valid JSON: {err}") from None
        return cls.from_json(data, f"affinity file {path}")

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``affinity.json`` and, with matplotlib (the ``report`` extra), one heatmap PNG per
        measure; returns the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "affinity.json", json.dumps(self.to_json(), indent=2))
        paths = [out / "affinity.json"]
        try:
            require("matplotlib", "report", "drawing affinity heatmaps")
        except MissingExtraError:
            return paths  # the heatmaps need the report extra; the JSON is the result
        for measure in HEATMAPS:
            path = out / f"{measure}.png"
            heatmap_png(self.matrix(measure), self.tasks, measure, path, self.stderr(measure))
            paths.append(path)
        return paths


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ConfigError(
            f"affinity: unknown measure '{measure}'; available: {', '.join(MEASURES)}"
        )


def _square(data: Mapping[str, Any], key: str, n: int, where: str) -> np.ndarray:
    if key not in data:
        raise ConfigError(f"{where}: field '{key}' is missing")
    try:
        m = np.asarray(
            [[math.nan if v is None else v for v in row] for row in data[key]], dtype=float
        )
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: field '{key}' must be a {n}×{n} matrix of numbers") from None
    if m.shape != (n, n):
        raise ConfigError(
            f"{where}: field '{key}' must be a {n}×{n} matrix (one row per task), "
            f"got shape {m.shape}"
        )
    return m


def _nan_to_none(m: np.ndarray) -> list[list[float | None]]:
    """JSON has no NaN: unknown errors are written as null."""
    return [[float(v) if math.isfinite(v) else None for v in row] for row in np.asarray(m)]


#: how each measure is drawn: title, colour scale, limits (None: from the data, symmetric)
HEATMAPS: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "cosine": ("mean gradient cosine cos(∇L_i, ∇L_j)", "RdBu_r", (-1.0, 1.0)),
    "conflict": ("share of steps with cos < 0", "viridis", (0.0, 1.0)),
    "tag": ("lookahead affinity Z(i→j), % change of L_j", "RdBu_r", None),
}


def draw_heatmap(
    ax: Any,
    matrix: np.ndarray,
    tasks: Sequence[str],
    measure: str,
    stderr: np.ndarray | None = None,
) -> Any:
    """Draw one affinity measure on ``ax``: a sequential scale on [0, 1] for the conflict share,
    a diverging scale centred at 0 for cosines and TAG, the diagonal (a task with itself)
    masked, each cell annotated (``+1.23 ± 0.40`` with ``stderr``) in black or white, whichever
    contrasts with its colour, and axis titles. Returns the image (for a colour bar)."""
    import matplotlib.pyplot as plt

    title, cmap_name, limits = HEATMAPS[measure]
    m = np.array(matrix, dtype=float)
    se = None if stderr is None else np.array(stderr, dtype=float)
    n = len(tasks)
    off = ~np.eye(n, dtype=bool)
    if limits is None:
        finite = np.abs(m[off & np.isfinite(m)])
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        limits = (-top, top)
    cmap = plt.get_cmap(cmap_name).with_extremes(bad="#e6e6e6")
    masked = np.ma.masked_where(~off | ~np.isfinite(m), m)
    image = ax.imshow(masked, cmap=cmap, vmin=limits[0], vmax=limits[1])
    ax.set_xticks(range(n), tasks, rotation=45, ha="right")
    ax.set_yticks(range(n), tasks)
    ax.set_xlabel("target task j (affected)")
    ax.set_ylabel("source task i")
    norm = image.norm
    size = 10 if se is None else (9 if n <= 4 else 7)
    for i in range(n):
        for j in range(n):
            if i == j:
                ax.text(j, i, "—", ha="center", va="center", color="#666666", fontsize=10)
                continue
            if not np.isfinite(m[i, j]):
                continue
            r, g, b, _ = cmap(norm(m[i, j]))
            luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
            colour = "black" if luminance > 0.5 else "white"
            text = f"{m[i, j]:.2g}" if se is None else format_estimate(m[i, j], se[i, j])
            ax.text(
                j,
                i,
                text.replace(" ± ", "\n± "),
                ha="center",
                va="center",
                color=colour,
                fontsize=size,
            )
    ax.set_title(title, fontsize=11)
    return image


def heatmap_png(
    matrix: np.ndarray,
    tasks: Sequence[str],
    measure: str,
    path: Path,
    stderr: np.ndarray | None = None,
) -> None:
    """A heatmap of one affinity measure (:func:`draw_heatmap`), at least 500 px a side."""
    require("matplotlib", "report", "drawing affinity heatmaps").use("Agg")
    import matplotlib.pyplot as plt

    n = len(tasks)
    size = max(6.0, 1.2 * n + 3.0)
    fig, ax = plt.subplots(figsize=(size, size - 0.6))
    image = draw_heatmap(ax, matrix, tasks, measure, stderr)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- one step


def gradient_cosines(jacobian: Tensor) -> np.ndarray:
    """The T × T cosines of the rows of J, from G = J Jᵀ (0 where a gradient is zero)."""
    gram = (jacobian @ jacobian.T).double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
    return cos.cpu().numpy()


def _losses(
    outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], tasks: Sequence[Task]
) -> Tensor:
    return torch.stack([t.compute_loss(outputs[t.name], targets[t.name], False) for t in tasks])


def lookahead_affinity(
    model: nn.Module,
    inputs: Any,
    targets: Mapping[str, Tensor],
    tasks: Sequence[Task],
    jacobian: Tensor,
    shared: Sequence[tuple[str, nn.Parameter]],
    lr: float,
) -> np.ndarray:
    """Z[i, j] = 100 · (1 − L_j(θ − lr·∇L_i) / L_j(θ)) on this batch, in % (rows of
    ``jacobian`` = ∇L_i).

    ``shared`` names the shared parameters in the Jacobian's column order. The model is called
    through :func:`torch.func.functional_call` with substituted shared parameters and cloned
    buffers, under a forked random state reset to the same seed for every pass; nothing of
    the model or of the global random streams changes.
    """
    from torch.func import functional_call

    buffers = {n: b for n, b in model.named_buffers()}
    seed = 0  # every pass draws the same dropout masks
    sizes = [p.numel() for _, p in shared]

    def losses_at(params: dict[str, Tensor]) -> Tensor:
        with torch.random.fork_rng(devices=_devices(jacobian)):
            torch.manual_seed(seed)
            state = {**{n: b.clone() for n, b in buffers.items()}, **params}
            outputs = functional_call(model, state, (inputs,), strict=False)
        return _losses(outputs, targets, tasks).double()

    with torch.no_grad():
        base = losses_at({})
        t = jacobian.shape[0]
        z = np.zeros((t, t))
        for i in range(t):
            steps = torch.split(jacobian[i], sizes)
            params = {
                n: p.detach() - lr * g.reshape(p.shape).to(p.dtype)
                for (n, p), g in zip(shared, steps, strict=True)
            }
            after = losses_at(params)
            z[i] = (100.0 * (1.0 - after / base)).cpu().numpy()
    return z


def _devices(tensor: Tensor) -> list[int]:
    return [tensor.device.index or 0] if tensor.device.type == "cuda" else []


# ---------------------------------------------------------------------------- training run


def _shared_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    getter = getattr(model, "shared_parameters", None)
    if getter is None:
        raise ConfigError(
            "affinity: the model has no shared_parameters(); it must follow the MTLModel contract"
        )
    ids = {id(p) for p in getter()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]


def measure_affinity(
    model: nn.Module,
    tasks: Sequence[Task],
    weighting: Any,
    train: Any,
    *,
    optimizer: torch.optim.Optimizer,
    steps: int | None = None,
    epochs: int | None = None,
    every: int = 5,
    lr: float | None = None,
    device: str | torch.device = "cpu",
    min_measured: int = 30,
    max_measured: int = 200,
    rel_stderr: float = 0.25,
) -> Affinity:
    """Train ``model`` with ``weighting`` on ``train`` and measure affinity every ``every``
    steps (see the module docstring), until the estimate is precise.

    The rule: after at least ``min_measured`` measured steps, stop as soon as, for the cosine
    and the lookahead alike, every off-diagonal pair's standard error is at most
    ``rel_stderr`` times the root mean square of the off-diagonal scores
    (:func:`is_precise`); stop anyway after ``max_measured`` measured steps. Passes over
    ``train`` repeat as needed. ``epochs`` and ``steps``, when given, are a hard budget that
    ends the run earlier. :attr:`Affinity.stop` records which of these ended it:
    ``"precise"``, ``"max_measured"`` or ``"budget"``.

    ``lr`` is the lookahead step η (the optimiser's first learning rate by default).
    """
    if every < 1:
        raise ConfigError(f"affinity: option 'every' must be ≥ 1, got {every}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"affinity: option 'epochs' must be ≥ 1, got {epochs}")
    if steps is not None and steps < 1:
        raise ConfigError(f"affinity: option 'steps' must be ≥ 1, got {steps}")
    if min_measured < 2:
        raise ConfigError(f"affinity: option 'min_measured' must be ≥ 2, got {min_measured}")
    if max_measured < min_measured:
        raise ConfigError(
            f"affinity: option 'max_measured' ({max_measured}) must be ≥ 'min_measured' "
            f"({min_measured})"
        )
    if not rel_stderr > 0:
        raise ConfigError(f"affinity: option 'rel_stderr' must be > 0, got {rel_stderr}")
    eta = float(optimizer.param_groups[0]["lr"]) if lr is None else float(lr)
    if not eta > 0:
        raise ConfigError(f"affinity: option 'lr' must be > 0, got {eta}")
    if len(tasks) < 2:
        raise ConfigError("affinity: needs at least two tasks")
    device = torch.device(device)
    model.to(device)
    names = [t.name for t in tasks]
    shared = _shared_named(model)
    if not shared:
        raise ConfigError("affinity: the model has no shared parameters to measure on")
    use_rep = bool(getattr(model, "has_representation", False))
    cosines: list[np.ndarray] = []
    tags: list[np.ndarray] = []
    step = epoch = 0
    stop = ""
    history: list[dict[str, Any]] = []
    train_seconds = measure_seconds = 0.0
    while not stop:
        if epochs is not None and epoch >= epochs:
            stop = "budget"
            break
        batches = 0
        for inputs, targets in train:
            if steps is not None and step >= steps:
                stop = "budget"
                break
            batches += 1
            started = time.perf_counter()
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            model.train()
            if use_rep:
                outputs, rep = model.forward_with_representation(inputs)
            else:
                outputs, rep = model(inputs), None
            losses = {t.name: t.compute_loss(outputs[t.name], targets[t.name]) for t in tasks}
            train_seconds += time.perf_counter() - started
            if step % every == 0:
                started = time.perf_counter()
                stacked = torch.stack([losses[t] for t in names])
                jac = task_jacobian(stacked, [p for _, p in shared], representation=rep)
                cos = gradient_cosines(jac.detach())
                z = lookahead_affinity(model, inputs, targets, tasks, jac.detach(), shared, eta)
                cosines.append(cos)
                tags.append(z)
                history.append({"step": step, "cosine": cos.tolist(), "tag": z.tolist()})
                measure_seconds += time.perf_counter() - started
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            regularization = getattr(model, "regularization", None)
            if callable(regularization):
                extra = regularization()
                if isinstance(extra, Tensor) and extra.requires_grad:
                    extra.backward(retain_graph=True)
            weighting.backward(losses, model, representation=rep)
            optimizer.step()
            step += 1
            train_seconds += time.perf_counter() - started
            measured = len(cosines)
            if (step - 1) % every == 0:  # a new measurement: apply the stopping rule
                if measured >= max_measured:
                    stop = "max_measured"
                elif measured >= min_measured and all(
                    is_precise(np.asarray(x), rel_stderr) for x in (cosines, tags)
                ):
                    stop = "precise"
                if stop:
                    break
        if batches == 0:
            break
        epoch += 1
    if not cosines:
        raise ConfigError("affinity: the training data yielded no batch to measure on")
    seconds = {
        "train": train_seconds,
        "measure": measure_seconds,
        "measure_per_step_vs_train_step": (
            (measure_seconds / step) / (train_seconds / step) if train_seconds else math.nan
        ),
    }
    cos_all, tag_all = np.asarray(cosines), np.asarray(tags)
    conflict_all = (cos_all < 0).astype(float)
    errors = {
        "cosine": standard_error(cos_all),
        "conflict": standard_error(conflict_all),
        "tag": standard_error(tag_all),
    }
    return Affinity(
        names,
        cos_all.mean(axis=0),
        conflict_all.mean(axis=0),
        tag_all.mean(axis=0),
        len(cosines),
        seconds,
        history,
        errors,
        stop or "budget",
        eta,
    )
