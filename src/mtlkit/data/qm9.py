"""QM9: multi-target regression of 12 quantum-chemical properties of small molecules.

Ramakrishnan, Dral, Rupp & von Lilienfeld, 2014, "Quantum chemistry structures and properties
of 134 kilo molecules", Scientific Data: DFT (B3LYP/6-31G(2df,p)) properties of the organic
molecules with up to 9 heavy atoms (C, N, O, F). The copy read here is the one in the
``qm9pack`` package (extra ``mtlkit[datasets]``): 130,831 molecules (the 3,054 whose geometry
did not converge are left out) in ``qm9pack/data/qm9_part{1,2,3}.csv``. The files are read
with :mod:`importlib.resources` from the package's spec **without importing it** (its loader
imports ``pkg_resources``, absent from modern setuptools), with the standard library's
``csv``; each file row holds the SMILES, InChI, element list, Cartesian coordinates (Å),
Mulliken charges, harmonic frequencies, rotational constants and the properties below.

**Tasks** — the 12 standard targets (as in MoleculeNet and the MTL benchmarks of Navon et al.,
2022, "Multi-Task Learning as a Bargaining Game", ICML), one regression task each so that
every target gets its own loss, weight and metrics, in the files' units:
``mu`` (D), ``alpha`` (a₀³), ``homo``, ``lumo``, ``gap``, ``zpve``, ``u0``, ``u298``, ``h298``,
``g298`` (Hartree), ``r2`` (a₀²), ``cv`` (cal/mol K). The energies are not converted to eV.

**Standardisation** — each target is standardised with its training-split mean μ and standard
deviation σ *inside the task*: the head (``standardized``) predicts z and outputs μ + σ·z, and
the loss is the MSE of z, ``mean((ŷ − y)²) / σ²``. Training is exactly that on standardised
targets, while the outputs, targets and metrics (``mae`` first, then ``rmse``, ``r2``) are in
the original units, so the reported MAE needs no conversion.

**Inputs** (``inputs``):

- ``descriptors`` (default): a fixed vector per molecule, standardised with training
  statistics — the atom counts (H, C, N, O, F) and the sorted eigenvalue spectrum of the
  Coulomb matrix (Rupp, Tkatchenko, Müller & von Lilienfeld, 2012, "Fast and Accurate
  Modeling of Molecular Atomization Energies with Machine Learning", PRL), ``C_ii = ½ Z_i^2.4``,
  ``C_ij = Z_i Z_j / |R_i − R_j|`` (Å here, not Bohr), padded with zeros to 29 atoms. The
  encoder is the ``mlp``.
- ``atoms``: the molecule as a set of atoms, ``{"atoms": (N, 29, F), "mask": (N, 29)}``; each
  atom is its element (one-hot) and radial symmetry functions per neighbour element (Behler &
  Parrinello, 2007, "Generalized Neural-Network Representation of High-Dimensional
  Potential-Energy Surfaces", PRL), ``G = Σ_j exp(−η (r_ij − r_s)²) f_c(r_ij)`` for 8 shells
  ``r_s`` in [0.8, 4.5] Å, η = 4 Å⁻², cosine cutoff 5 Å. The encoder ``atom_sum`` is a Deep
  Sets network (Zaheer et al., 2017, "Deep Sets", NeurIPS): an atom MLP, a sum over the
  atoms, then a molecule MLP. Both inputs are invariant to rotation, translation and the
  order of atoms.

Harmonic frequencies, Mulliken charges and rotational constants are outputs of the same DFT
run (the frequencies fix ``zpve`` exactly), so they are never used as inputs.

Splits are a seeded random permutation (``split_fractions``, default 80/10/10) of all
molecules, or of a random ``subsample`` of them for speed.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlkit.data.base import DATASETS, DataBundle, TensorSplit
from mtlkit.errors import DatasetError, MissingExtraError
from mtlkit.files import decode_text
from mtlkit.tasks import StandardizedMSE, Task

#: (task name, column of the qm9pack files, unit)
TARGETS: tuple[tuple[str, str, str], ...] = (
    ("mu", "Dipole_debye", "D"),
    ("alpha", "Polarizability_bohr3", "a0^3"),
    ("homo", "HOMO_au", "Ha"),
    ("lumo", "LUMO_au", "Ha"),
    ("gap", "HOMO_LUMO_gap_au", "Ha"),
    ("r2", "R2_bohr2", "a0^2"),
    ("zpve", "ZPVE_au", "Ha"),
    ("u0", "InternalEnergy_0K_au", "Ha"),
    ("u298", "InternalEnergy_298K_au", "Ha"),
    ("h298", "Enthalphy_298K_au", "Ha"),
    ("g298", "GibbsFreeEnergy_298K_au", "Ha"),
    ("cv", "Heatcapacity_Cv_cal_mol_K", "cal/mol K"),
)
ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
CHARGES = np.array([0.0, 1.0, 6.0, 7.0, 8.0, 9.0])  # index 0 = padding
MAX_ATOMS = 29
PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
SHELLS = np.linspace(0.8, 4.5, 8)
ETA, CUTOFF = 4.0, 5.0


# --------------------------------------------------------------------------- reading


@dataclass
class Molecules:
    """Molecules as padded arrays: ``elements`` (N, 29) int8 (1..5 = H, C, N, O, F; 0 = none),
    ``coordinates`` (N, 29, 3) float64 in Å, ``targets`` (N, 12) float64 in the
    :data:`TARGETS` order, ``index`` (N,) the QM9 molecule numbers."""

    elements: np.ndarray
    coordinates: np.ndarray
    targets: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def qm9pack_folder() -> Any:
    """The ``data`` folder of the installed ``qm9pack`` (a Traversable), found from the
    package's spec so its ``__init__`` (which needs ``pkg_resources``) never runs."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None:
        raise MissingExtraError("qm9pack", "datasets", "the QM9 dataset")
    return importlib.resources.files(importlib.util.module_from_spec(spec)) / "data"


_SYMBOL = {f"'{e}'": k for k, e in enumerate(ELEMENTS, start=1)}
_BRACKETS = str.maketrans("[]", "  ")


def _read_part(path: Any) -> tuple[list[list[int]], np.ndarray, list[list[str]], list[str]]:
    """Element codes, all coordinates (flat), target strings and indices of one CSV file."""
    elements: list[list[int]] = []
    xyz: list[str] = []
    targets: list[list[str]] = []
    index: list[str] = []
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read QM9 file {path}: {err.strerror or err}") from None
    with io.StringIO(decode_text(data, path, "QM9 file", DatasetError), newline="") as fh:
        reader = csv.reader(fh)
        col = {c: i for i, c in enumerate(next(reader, []))}
        needed = ["Index", "Elements", "XYZ_Ang"] + [c for _, c, _ in TARGETS]
        missing = [c for c in needed if c not in col]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
        t_cols = [col[c] for _, c, _ in TARGETS]
        for line, row in enumerate(reader, start=2):
            try:
                codes = [_SYMBOL[e.strip()] for e in row[col["Elements"]].strip()[1:-1].split(",")]
            except KeyError as err:
                raise DatasetError(f"{path}, line {line}: unknown element {err}") from None
            if not 0 < len(codes) <= MAX_ATOMS:
                raise DatasetError(f"{path}, line {line}: {len(codes)} atoms (1 to 29 expected)")
            elements.append(codes)
            xyz.append(row[col["XYZ_Ang"]])
            targets.append([row[c] for c in t_cols])
            index.append(row[col["Index"]])
    flat = np.fromstring(",".join(xyz).translate(_BRACKETS), sep=",")  # one C-level parse
    if flat.size != 3 * sum(len(e) for e in elements):
        raise DatasetError(f"{path}: the coordinates do not give 3 numbers per atom")
    return elements, flat, targets, index


def read_molecules(root: str | Path | None = None) -> Molecules:
    """Every molecule of the qm9pack files (or of the same CSV files in folder ``root``);
    parsed once per process (about 10 s for the 130,831 molecules) and cached."""
    return _read_cached(None if root is None else str(Path(root).expanduser().resolve()))


@functools.lru_cache(maxsize=2)
def _read_cached(root: str | None) -> Molecules:
    folder = qm9pack_folder() if root is None else Path(root)
    names = [p for p in PARTS if (folder / p).is_file()]
    if not names:
        raise DatasetError(f"dataset 'qm9': no {', '.join(PARTS)} in {folder}")
    elements: list[list[int]] = []
    flats, targets, index = [], [], []
    for name in names:
        e, flat, t, i = _read_part(folder / name)
        elements += e
        flats.append(flat)
        targets += t
        index += i
    n = len(index)
    counts = np.array([len(e) for e in elements])
    z = np.zeros((n, MAX_ATOMS), dtype=np.int8)
    real = np.arange(MAX_ATOMS) < counts[:, None]
    z[real] = np.concatenate([np.array(e, dtype=np.int8) for e in elements])
    xyz = np.zeros((n, MAX_ATOMS, 3))
    xyz[real] = np.concatenate(flats).reshape(-1, 3)
    try:
        y = np.array(targets, dtype=np.float64)
        idx = np.array(index, dtype=np.int64)
    except ValueError as err:
        raise DatasetError(f"dataset 'qm9': unreadable value in {folder} ({err})") from None
    return Molecules(z, xyz, y, idx)


# --------------------------------------------------------------------------- features


def _distances(coordinates: np.ndarray) -> np.ndarray:
    diff = coordinates[:, :, None, :] - coordinates[:, None, :, :]
    return np.sqrt((diff**2).sum(-1))


def coulomb_spectrum(elements: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Eigenvalues of each molecule's Coulomb matrix, sorted by decreasing magnitude and
    zero-padded to 29 (Rupp et al. 2012); ``(N, 29)``."""
    out = np.zeros(elements.shape, dtype=np.float64)
    for start in range(0, len(elements), 4096):
        z = CHARGES[elements[start : start + 4096]]
        r = _distances(coordinates[start : start + 4096])
        with np.errstate(divide="ignore"):
            c = np.where(r > 0, z[:, :, None] * z[:, None, :] / np.where(r > 0, r, 1.0), 0.0)
        idx = np.arange(elements.shape[1])
        c[:, idx, idx] = 0.5 * z**2.4
        ev = np.linalg.eigvalsh(c)
        order = np.argsort(-np.abs(ev), axis=1)
        out[start : start + 4096] = np.take_along_axis(ev, order, axis=1)
    return out


def atom_features(elements: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Per-atom features ``(N, 29, 5 + 5·8)``: one-hot element, then Behler–Parrinello radial
    functions per neighbour element and shell; zero rows for padding."""
    n, m = elements.shape
    out = np.zeros((n, m, len(ELEMENTS) * (1 + len(SHELLS))), dtype=np.float32)
    for start in range(0, n, 2048):
        e = elements[start : start + 2048].astype(np.int64)
        real = e > 0
        r = _distances(coordinates[start : start + 2048])
        pair = real[:, :, None] & real[:, None, :] & ~np.eye(m, dtype=bool)
        fc = np.where(pair & (r < CUTOFF), 0.5 * (np.cos(np.pi * r / CUTOFF) + 1.0), 0.0)
        g = np.exp(-ETA * (r[..., None] - SHELLS) ** 2) * fc[..., None]  # (b, i, j, shells)
        onehot = np.eye(len(ELEMENTS) + 1)[e][..., 1:]  # (b, j, 5)
        radial = np.einsum("bijs,bje->bies", g, onehot).reshape(len(e), m, -1)
        out[start : start + 2048] = np.concatenate([onehot, radial], axis=-1) * real[..., None]
    return out


# --------------------------------------------------------------------------- the dataset


def _splits(n: int, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    c = min(n, b + round(fractions[2] * n))
    return [order[:a], order[a:b], order[b:c]]


@DATASETS.register("qm9")
def qm9(
    inputs: str = "descriptors",
    subsample: int | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    targets: Sequence[str] | None = None,
    seed: int = 0,
    root: str | None = None,
) -> DataBundle:
    """QM9 from ``qm9pack`` (or the same CSV files in ``root``); see the module docstring.

    Args:
        inputs: ``descriptors`` (Coulomb spectrum + atom counts, ``mlp`` encoder) or
            ``atoms`` (per-atom radial features, ``atom_sum`` encoder).
        subsample: use this many randomly chosen molecules (all when None).
        split_fractions: train, val and test shares (summing to ≤ 1).
        targets: the task names to keep (all 12 when None).
        seed: fixes the subsample and the split.
        root: a folder holding ``qm9_part*.csv`` in the qm9pack format (tests use tiny ones).
    """
    where = "dataset 'qm9'"
    if inputs not in ("descriptors", "atoms"):
        raise DatasetError(f"{where}: option 'inputs' must be descriptors or atoms, got {inputs}")
    names = [t for t, _, _ in TARGETS]
    chosen = list(names if targets is None else targets)
    unknown = [t for t in chosen if t not in names]
    if unknown or not chosen:
        raise DatasetError(
            f"{where}: option 'targets': unknown or empty {unknown or chosen}; "
            f"available: {', '.join(names)}"
        )
    fr = tuple(float(f) for f in split_fractions)
    if len(fr) != 3 or min(fr) <= 0 or sum(fr) > 1.0 + 1e-9:
        raise DatasetError(
            f"{where}: option 'split_fractions' must be three positive shares summing to ≤ 1, "
            f"got {list(split_fractions)}"
        )
    if subsample is not None and subsample < 3:
        raise DatasetError(f"{where}: option 'subsample' must be ≥ 3, got {subsample}")
    mols = read_molecules(root)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(mols))
    if subsample is not None and subsample < len(mols):
        keep = np.sort(rng.choice(len(mols), subsample, replace=False))
    parts = [keep[p] for p in _splits(len(keep), fr, rng)]
    if min(len(p) for p in parts) == 0:
        raise DatasetError(f"{where}: {len(keep)} molecules leave an empty split")
    columns = [names.index(t) for t in chosen]
    y = mols.targets[:, columns]
    mean, std = y[parts[0]].mean(0), y[parts[0]].std(0)
    std = np.where(std > 0, std, 1.0)

    position = {int(m): k for k, m in enumerate(keep)}  # molecule number → row of features
    if inputs == "descriptors":
        z, xyz = mols.elements[keep], mols.coordinates[keep]
        counts = np.stack([(z == k).sum(1) for k in range(1, len(ELEMENTS) + 1)], 1)
        feats = np.concatenate([counts, coulomb_spectrum(z, xyz)], 1)
        train_rows = [position[int(i)] for i in parts[0]]
        mu, sd = feats[train_rows].mean(0), feats[train_rows].std(0)
        feats = ((feats - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)

        def x_of(idx: np.ndarray) -> Any:
            return torch.from_numpy(feats[[position[int(i)] for i in idx]])

        encoder = ("mlp", {"in_features": feats.shape[1], "hidden": [256, 256]})
    else:
        atoms = atom_features(mols.elements[keep], mols.coordinates[keep])

        def x_of(idx: np.ndarray) -> Any:
            rows = [position[int(i)] for i in idx]
            return {
                "atoms": torch.from_numpy(atoms[rows]),
                "mask": torch.from_numpy(mols.elements[idx] > 0),
            }

        encoder = ("atom_sum", {"in_features": atoms.shape[-1]})

    def split(idx: np.ndarray, name: str) -> TensorSplit:
        ys = {t: torch.from_numpy(y[idx, k].astype(np.float32)) for k, t in enumerate(chosen)}
        return TensorSplit(x_of(idx), ys, name)

    tasks = [
        Task(
            t,
            "regression",
            1,
            loss=StandardizedMSE(float(std[k])),
            metrics=["mae", "rmse", "r2"],
            head="standardized",
            head_params={"mean": float(mean[k]), "std": float(std[k])},
        )
        for k, t in enumerate(chosen)
    ]
    units = {t: u for t, _, u in TARGETS}
    return DataBundle(
        "qm9",
        split(parts[0], "train"),
        split(parts[1], "val"),
        split(parts[2], "test"),
        tasks,
        encoder,
        info={
            "units": {t: units[t] for t in chosen},
            "train_mean": dict(zip(chosen, mean.tolist(), strict=True)),
            "train_std": dict(zip(chosen, std.tolist(), strict=True)),
            "molecules": len(keep),
            "inputs": inputs,
        },
    )


__all__ = [
    "ELEMENTS",
    "TARGETS",
    "Molecules",
    "atom_features",
    "coulomb_spectrum",
    "qm9",
    "qm9pack_folder",
    "read_molecules",
]
