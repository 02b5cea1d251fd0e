"""QM9: reading the qm9pack CSV format, invariant features, standardisation, original-unit MAE."""

from __future__ import annotations

import csv
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data.base import load_dataset
from mtlkit.data.qm9 import (
    ELEMENTS,
    TARGETS,
    atom_features,
    coulomb_spectrum,
    read_molecules,
)
from mtlkit.errors import ConfigError, DatasetError
from mtlkit.nn.heads import StandardizedHead
from mtlkit.nn.sets import AtomSumEncoder
from mtlkit.tasks import StandardizedMSE

COLUMNS = ["XYZ_file", "Index", "SMILES", "Elements", "XYZ_Ang", *[c for _, c, _ in TARGETS]]


def write_csv(
    path: Path, molecules: list[tuple[list[str], np.ndarray, np.ndarray]], start: int = 1
) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(COLUMNS)
        for k, (symbols, xyz, y) in enumerate(molecules, start=start):
            elements = "[" + ",".join(f"'{s}'" for s in symbols) + "]"
            coords = (
                "[" + ",".join("[" + ",".join(repr(float(v)) for v in r) + "]" for r in xyz) + "]"
            )
            writer.writerow(
                [f"dsgdb9nsd_{k:06d}.xyz", k, "C", elements, coords, *[repr(float(v)) for v in y]]
            )


def random_molecules(n: int, seed: int = 0) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(2, 9))
        symbols = list(rng.choice(list(ELEMENTS), m))
        xyz = rng.normal(0, 1.5, (m, 3))
        heavy = sum(s != "H" for s in symbols)
        y = rng.normal(0, 1, 12) + np.arange(12) * 10 + heavy  # targets depend on the atoms
        out.append((symbols, xyz, y))
    return out


@pytest.fixture
def qm9_root(tmp_path: Path) -> tuple[Path, list]:
    mols = random_molecules(60)
    write_csv(tmp_path / "qm9_part1.csv", mols[:30])
    write_csv(tmp_path / "qm9_part2.csv", mols[30:], start=31)
    return tmp_path, mols


def test_reads_the_qm9pack_format(qm9_root: tuple[Path, list]) -> None:
    root, mols = qm9_root
    data = read_molecules(root)
    assert len(data) == 60 and data.index.tolist() == list(range(1, 61))
    for k in (0, 31, 59):
        symbols, xyz, y = mols[k]
        m = len(symbols)
        assert data.elements[k, :m].tolist() == [ELEMENTS.index(s) + 1 for s in symbols]
        assert np.all(data.elements[k, m:] == 0)
        np.testing.assert_allclose(data.coordinates[k, :m], xyz)
        np.testing.assert_allclose(data.targets[k], y)


def test_coulomb_spectrum_closed_form_and_invariance() -> None:
    # H2 at distance d: C = [[0.5, 1/d], [1/d, 0.5]] → eigenvalues 0.5 ± 1/d
    d = 0.74
    z = np.zeros((1, 29), np.int8)
    z[0, :2] = 1
    xyz = np.zeros((1, 29, 3))
    xyz[0, 1, 0] = d
    spec = coulomb_spectrum(z, xyz)[0]
    np.testing.assert_allclose(sorted(spec[:2]), [0.5 - 1 / d, 0.5 + 1 / d])
    assert np.all(spec[2:] == 0)
    # rotation, translation and atom order leave the spectrum unchanged
    rng = np.random.default_rng(0)
    z = np.zeros((1, 29), np.int8)
    z[0, :6] = [2, 1, 1, 4, 3, 1]
    xyz = np.zeros((1, 29, 3))
    xyz[0, :6] = rng.normal(size=(6, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(6)
    z2, xyz2 = z.copy(), xyz.copy()
    z2[0, :6] = z[0, perm]
    xyz2[0, :6] = xyz[0, perm] @ q.T + 3.0
    np.testing.assert_allclose(coulomb_spectrum(z, xyz), coulomb_spectrum(z2, xyz2), atol=1e-9)
    a, b = atom_features(z, xyz)[0, :6], atom_features(z2, xyz2)[0, :6]
    np.testing.assert_allclose(a[perm], b, atol=1e-5)


def test_atom_features_closed_form() -> None:
    """Two atoms C–O at r: the C row is one-hot C, then G(r_s) = exp(−4 (r − r_s)²) f_c(r)
    in the O block; padding rows are zero."""
    from mtlkit.data.qm9 import CUTOFF, ETA, SHELLS

    r = 1.2
    z = np.zeros((1, 29), np.int8)
    z[0, :2] = [2, 4]
    xyz = np.zeros((1, 29, 3))
    xyz[0, 1, 2] = r
    f = atom_features(z, xyz)[0]
    assert f.shape == (29, 5 + 5 * len(SHELLS))
    np.testing.assert_array_equal(f[0, :5], [0, 1, 0, 0, 0])
    fc = 0.5 * (np.cos(np.pi * r / CUTOFF) + 1)
    radial = f[0, 5:].reshape(5, len(SHELLS))
    np.testing.assert_allclose(radial[3], np.exp(-ETA * (r - SHELLS) ** 2) * fc, rtol=1e-5)
    assert np.all(radial[[0, 1, 2, 4]] == 0)
    assert np.all(f[2:] == 0)


def test_dataset_standardises_with_training_statistics(qm9_root: tuple[Path, list]) -> None:
    root, _ = qm9_root
    data = load_dataset("qm9", root=str(root), seed=1)
    assert [t.name for t in data.tasks] == [t for t, _, _ in TARGETS]
    assert (len(data.train), len(data.val), len(data.test)) == (48, 6, 6)
    for task in data.tasks:
        y = data.train.targets[task.name].double()
        assert task.head == "standardized" and task.metrics[0] == "mae"
        assert task.head_params["mean"] == pytest.approx(float(y.mean()), rel=1e-5)
        assert task.head_params["std"] == pytest.approx(float(y.std(unbiased=False)), rel=1e-5)
    # targets stay in original units; descriptors are standardised on train
    assert float(data.train.targets["cv"].mean()) > 100
    x = data.train.inputs
    assert x.shape == (48, 5 + 29)
    assert torch.allclose(x.mean(0), torch.zeros(34), atol=1e-5)
    c = load_dataset("qm9", root=str(root), seed=1)
    assert torch.equal(c.test.inputs, data.test.inputs)


def test_loss_is_mse_of_standardised_values_and_mae_in_original_units(
    qm9_root: tuple[Path, list],
) -> None:
    root, _ = qm9_root
    data = load_dataset("qm9", root=str(root), targets=["u0", "cv"])
    task = data.tasks[1]
    mean, std = task.head_params["mean"], task.head_params["std"]
    head = StandardizedHead(8, 1, mean=mean, std=std)
    rep = torch.randn(6, 8)
    z = head.net(rep)
    assert torch.allclose(head(rep), mean + std * z)
    y = data.test.targets["cv"]
    out = head(rep).detach()
    expected = (((out.squeeze(1) - y) / std) ** 2).mean()
    assert task.compute_loss(out, y).item() == pytest.approx(expected.item(), rel=1e-5)
    # MAE is reported in the target's units: a constant 0.25 error reads 0.25
    metrics = task.compute_metrics((y + 0.25).unsqueeze(1), y)
    assert metrics["mae"] == pytest.approx(0.25, rel=1e-5)
    assert data.info["units"] == {"u0": "Ha", "cv": "cal/mol K"}


def test_atoms_inputs_and_sum_encoder(qm9_root: tuple[Path, list]) -> None:
    root, _ = qm9_root
    data = load_dataset("qm9", root=str(root), inputs="atoms", subsample=40, seed=2)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 4, 4)
    x = data.train.inputs
    assert x["atoms"].shape == (32, 29, 45) and x["mask"].dtype == torch.bool
    name, params = data.encoder
    assert name == "atom_sum"
    enc = AtomSumEncoder(**params, atom_hidden=[16], hidden=[8])
    out = enc(x)
    assert out.shape == (32, 8)
    # invariant to the order of the atoms, and padding rows do not count
    perm = torch.randperm(29)
    shuffled = {"atoms": x["atoms"][:, perm], "mask": x["mask"][:, perm]}
    assert torch.allclose(enc(shuffled), out, atol=1e-5)
    noisy = {
        "atoms": torch.where(x["mask"][..., None], x["atoms"], torch.randn_like(x["atoms"])),
        "mask": x["mask"],
    }
    assert torch.allclose(enc(noisy), out, atol=1e-5)


def test_trains_end_to_end_and_reports_original_units(qm9_root: tuple[Path, list]) -> None:
    from mtlkit.nn import build_model
    from mtlkit.nn.encoders import MLPEncoder
    from mtlkit.train import Trainer
    from mtlkit.weighting import get

    root, _ = qm9_root
    torch.manual_seed(0)
    data = load_dataset("qm9", root=str(root), targets=["alpha", "cv"])
    model = build_model("hps", MLPEncoder(34, hidden=[32]), data.tasks)
    trainer = Trainer(
        model, data.tasks, get("ew"), epochs=1, progress=False, optimizer_params={"lr": 1e-2}
    )
    trainer.fit(data.loader("train", 16), data.loader("val", 64))
    result = trainer.evaluate(data.loader("test", 64))
    model.eval()
    with torch.no_grad():
        out = model(data.test.inputs)
    for t in ("alpha", "cv"):
        manual = (out[t].squeeze(1) - data.test.targets[t]).abs().mean().item()
        assert result[t]["mae"] == pytest.approx(manual, rel=1e-4)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"inputs": "graph"}, "option 'inputs'"),
        ({"targets": ["mu", "energy"]}, "option 'targets'"),
        ({"split_fractions": [0.8, 0.3, 0.1]}, "option 'split_fractions'"),
        ({"subsample": 2}, "option 'subsample'"),
    ],
)
def test_bad_options_are_named(qm9_root: tuple[Path, list], params: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset("qm9", root=str(qm9_root[0]), **params)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no qm9_part1\.csv"):
        read_molecules(tmp_path)
    (tmp_path / "qm9_part1.csv").write_text("Index,Elements\n1,\"['C']\"\n")
    with pytest.raises(DatasetError, match=r"qm9_part1\.csv: missing column\(s\) XYZ_Ang"):
        read_molecules(tmp_path)
    mols = random_molecules(2)
    mols[1] = (["C", "Xe"], mols[1][1][:2], mols[1][2])
    write_csv(tmp_path / "qm9_part1.csv", mols)
    with pytest.raises(DatasetError, match=r"qm9_part1\.csv, line 3: unknown element"):
        read_molecules(tmp_path)  # failed reads are not cached
    with pytest.raises(ConfigError, match="option 'std' must be > 0"):
        StandardizedHead(4, 1, std=0.0)
    with pytest.raises(ConfigError, match="option 'std' must be > 0"):
        StandardizedMSE(-1.0)


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed")
def test_real_qm9pack_files(tmp_path: Path) -> None:
    """The first molecules of the installed qm9pack files (methane, ammonia, water...),
    read without importing qm9pack (its loader needs pkg_resources)."""
    import sys

    from mtlkit.data.qm9 import qm9pack_folder

    folder = qm9pack_folder()
    assert "qm9pack" not in sys.modules
    names = {p.name for p in folder.iterdir()}
    assert {"qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"} <= names
    with (folder / "qm9_part1.csv").open("r", encoding="utf-8") as fh:
        head = list(itertools.islice(fh, 41))
    (tmp_path / "qm9_part1.csv").write_text("".join(head))
    data = read_molecules(tmp_path)
    assert len(data) == 40
    assert data.elements[0, :5].tolist() == [2, 1, 1, 1, 1]  # CH4
    ch4 = dict(zip([t for t, _, _ in TARGETS], data.targets[0], strict=True))
    assert ch4["alpha"] == pytest.approx(13.21) and ch4["u0"] == pytest.approx(-40.47893)
    assert ch4["gap"] == pytest.approx(ch4["lumo"] - ch4["homo"], abs=1e-4)
    bonds = np.linalg.norm(data.coordinates[0, 1:5] - data.coordinates[0, 0], axis=1)
    np.testing.assert_allclose(bonds, 1.09, atol=0.01)  # C–H bond length in Å
