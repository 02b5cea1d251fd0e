"""Dense datasets: shape scenes, the MTAN/LibMTL ``.npy`` layout, errors, and the full run path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data.base import DATASETS, load_dataset
from mtlkit.data.dense import read_npy_split
from mtlkit.data.shapes import CATEGORIES, make_scene
from mtlkit.errors import DatasetError

H, W = 6, 8


def write_sample(
    folder: Path,
    i: int,
    rng: np.random.Generator,
    classes: int = 13,
    normals: bool = True,
    label_dir: str = "label",
) -> dict[str, np.ndarray]:
    """One sample in the MTAN layout: channels last, float labels with −1, depth (H, W, 1)."""
    arrays = {
        "image": rng.uniform(0, 1, (H, W, 3)).astype(np.float32),
        label_dir: rng.integers(-1, classes, (H, W)).astype(np.float32),
        "depth": rng.uniform(0.5, 9.0, (H, W, 1)).astype(np.float32),
    }
    if normals:
        n = rng.normal(size=(H, W, 3))
        arrays["normal"] = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    for part, array in arrays.items():
        (folder / part).mkdir(parents=True, exist_ok=True)
        np.save(folder / part / f"{i}.npy", array)
    return arrays


def write_dataset(root: Path, n_train: int = 10, n_val: int = 4, **kw) -> dict:
    rng = np.random.default_rng(0)
    return {
        split: [write_sample(root / split, i, rng, **kw) for i in range(n)]
        for split, n in (("train", n_train), ("val", n_val))
    }


# --------------------------------------------------------------------------- dense_scenes


def test_dense_scenes_matches_make_scene_and_is_deterministic() -> None:
    a = load_dataset("dense_scenes", n_train=6, n_val=2, n_test=2, height=16, width=20, seed=5)
    b = load_dataset("dense_scenes", n_train=6, n_val=2, n_test=2, height=16, width=20, seed=5)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert a.train.inputs.shape == (6, 3, 16, 20)
    rng = np.random.default_rng(5)
    first = make_scene(rng, 16, 20, 4)
    np.testing.assert_array_equal(a.train.inputs[0].numpy(), first.image)
    np.testing.assert_array_equal(a.train.targets["segmentation"][0].numpy(), first.semantic)
    np.testing.assert_array_equal(a.train.targets["depth"][0].numpy(), first.depth)
    np.testing.assert_array_equal(a.train.targets["normals"][0].numpy(), first.normals)
    tasks = {t.name: t for t in a.tasks}
    assert tasks["segmentation"].num_outputs == len(CATEGORIES) + 1
    assert [tasks[k].kind for k in ("segmentation", "depth", "normals")] == [
        "segmentation",
        "depth",
        "normals",
    ]
    assert all(t.head == "dense" and t.head_params["out_size"] == [16, 20] for t in a.tasks)
    assert a.encoder[0] == "resnet" and a.encoder[1]["pool"] is False
    assert not torch.equal(a.train.inputs[:2], a.test.inputs)


def test_dense_scenes_bad_sizes_are_errors() -> None:
    with pytest.raises(DatasetError, match="n_train"):
        load_dataset("dense_scenes", n_train=0)


# --------------------------------------------------------------------------- .npy layout


def test_nyuv2_npy_reads_the_mtan_layout(tmp_path: Path) -> None:
    files = write_dataset(tmp_path, n_train=10, n_val=4)
    data = load_dataset("nyuv2_npy", root=str(tmp_path), val_fraction=0.2, seed=1)
    assert {"nyuv2_npy", "cityscapes_npy", "dense_scenes"} <= set(DATASETS.names())
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 4)
    # the files' val folder is the test split, read in numeric order, channels first
    for i, sample in enumerate(files["val"]):
        np.testing.assert_array_equal(
            data.test.inputs[i].numpy(), np.moveaxis(sample["image"], -1, 0)
        )
        np.testing.assert_array_equal(
            data.test.targets["segmentation"][i].numpy(), sample["label"].astype(np.int64)
        )
        np.testing.assert_array_equal(
            data.test.targets["depth"][i].numpy(), sample["depth"][..., 0]
        )
        np.testing.assert_array_equal(
            data.test.targets["normals"][i].numpy(), np.moveaxis(sample["normal"], -1, 0)
        )
    assert data.test.targets["segmentation"].dtype == torch.int64
    assert int(data.test.targets["segmentation"].min()) == -1  # ignore label kept
    # validation is a seeded share of train, disjoint from the rest of train
    train_imgs = {tuple(x.flatten()[:4].tolist()) for x in data.train.inputs}
    val_imgs = {tuple(x.flatten()[:4].tolist()) for x in data.val.inputs}
    assert not train_imgs & val_imgs and len(train_imgs | val_imgs) == 10
    assert [t.num_outputs for t in data.tasks] == [13, 1, 3]


def test_numeric_file_order_and_test_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for i in (0, 2, 10):  # "10" must come after "2"
            write_sample(tmp_path / split, i, rng)
    data = load_dataset("nyuv2_npy", root=str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 3)
    last = np.load(tmp_path / "test" / "image" / "10.npy")
    np.testing.assert_array_equal(data.test.inputs[2].numpy(), np.moveaxis(last, -1, 0))


def test_channels_first_uint8_and_255_ignore(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    for part in ("image", "label", "depth", "normal"):
        (folder / part).mkdir(parents=True)
    image = np.arange(3 * H * W, dtype=np.uint8).reshape(3, H, W)
    label = np.zeros((H, W), dtype=np.uint8)
    label[0, 0] = 255
    np.save(folder / "image" / "0.npy", image)
    np.save(folder / "label" / "0.npy", label)
    np.save(folder / "depth" / "0.npy", np.ones((H, W), np.float32))
    np.save(folder / "normal" / "0.npy", np.zeros((3, H, W), np.float32))
    split = read_npy_split(folder, classes=13, normals=True)
    np.testing.assert_allclose(split.inputs[0].numpy(), image / 255.0, rtol=1e-6)
    assert int(split.targets["segmentation"][0, 0, 0]) == -1  # 255 and -1 both mean ignored


def test_resize_keeps_labels_and_unit_normals(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_train=4, n_val=2)
    data = load_dataset("nyuv2_npy", root=str(tmp_path), size=[3, 4], val_fraction=0.25)
    assert data.test.inputs.shape == (2, 3, 3, 4)
    seg = data.test.targets["segmentation"]
    assert seg.shape == (2, 3, 4) and set(seg.unique().tolist()) <= set(range(-1, 13))
    norms = data.test.targets["normals"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert all(t.head_params["out_size"] == [3, 4] for t in data.tasks)


def test_cityscapes_npy_label_folders(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n_train=5, n_val=2, classes=7, normals=False)
    data = load_dataset("cityscapes_npy", root=str(tmp_path / "a"), val_fraction=0.2)
    assert [t.name for t in data.tasks] == ["segmentation", "depth"]
    assert data.tasks[0].num_outputs == 7 and "normals" not in data.train.targets
    write_dataset(
        tmp_path / "b", n_train=5, n_val=2, classes=19, normals=False, label_dir="label_19"
    )
    data = load_dataset("cityscapes_npy", root=str(tmp_path / "b"), classes=19, val_fraction=0.2)
    assert data.tasks[0].num_outputs == 19
    with pytest.raises(DatasetError, match="option 'classes' must be 7 or 19"):
        load_dataset("cityscapes_npy", root=str(tmp_path / "a"), classes=13)


# --------------------------------------------------------------------------- bad input


def test_disagreeing_shapes_name_the_file(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_train=4, n_val=2)
    bad = tmp_path / "train" / "depth" / "2.npy"
    np.save(bad, np.ones((H, W + 1, 1), np.float32))
    with pytest.raises(DatasetError, match=r"depth/2\.npy: depth has size \(6, 9\)"):
        load_dataset("nyuv2_npy", root=str(tmp_path))


@pytest.mark.parametrize(
    ("part", "array", "message"),
    [
        ("normal", np.ones((H, W, 2), np.float32), r"normal/1\.npy: normal array has shape"),
        ("label", np.ones((H, W + 2), np.float32), r"label/1\.npy: label has size"),
        ("label", np.full((H, W), 13.0, np.float32), r"label/1\.npy: label 13 is outside"),
        ("label", np.full((H, W), 0.5, np.float32), r"label/1\.npy: .*not whole numbers"),
        ("image", np.ones((H + 1, W, 3), np.float32), r"image/1\.npy: image is 7 × 8"),
        ("image", np.ones((H, W), np.float32), r"image/1\.npy: image array has shape"),
    ],
)
def test_bad_arrays_name_the_file(
    tmp_path: Path, part: str, array: np.ndarray, message: str
) -> None:
    write_dataset(tmp_path, n_train=3, n_val=2)
    np.save(tmp_path / "train" / part / "1.npy", array)
    with pytest.raises(DatasetError, match=message):
        load_dataset("nyuv2_npy", root=str(tmp_path))


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_train=3, n_val=2)
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*train/depth/1\.npy"):
        load_dataset("nyuv2_npy", root=str(tmp_path))
    np.save(tmp_path / "train" / "depth" / "1.npy", np.ones((H, W, 1), np.float32))
    np.save(tmp_path / "train" / "depth" / "7.npy", np.ones((H, W, 1), np.float32))
    with pytest.raises(DatasetError, match=r"depth/7\.npy has no matching image"):
        load_dataset("nyuv2_npy", root=str(tmp_path))
    (tmp_path / "train" / "depth" / "7.npy").unlink()
    (tmp_path / "val" / "image" / "0.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetError, match=r"cannot read .*val/image/0\.npy"):
        load_dataset("nyuv2_npy", root=str(tmp_path))
    np.save(tmp_path / "val" / "image" / "0.npy", np.ones((H, W, 3), np.float32))
    for f in (tmp_path / "val" / "normal").iterdir():
        f.unlink()
    (tmp_path / "val" / "normal").rmdir()
    with pytest.raises(DatasetError, match=r"missing folder .*val/normal \(the normal arrays\)"):
        load_dataset("nyuv2_npy", root=str(tmp_path))
    with pytest.raises(DatasetError, match="option 'root'"):
        load_dataset("nyuv2_npy", root=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- full run path


def dense_config(**data_params) -> dict:
    return {
        "name": "dense",
        "seed": 0,
        "data": {
            "name": "dense_scenes",
            "batch_size": 8,
            "params": {
                "n_train": 16,
                "n_val": 8,
                "n_test": 8,
                "height": 16,
                "width": 16,
                **data_params,
            },
        },
        "model": {
            "architecture": "hps",
            "encoder": {"name": "resnet", "params": {"widths": [8, 16], "blocks": 1}},
        },
        "tasks": [
            {"name": "segmentation", "head_params": {"out_size": [16, 16], "hidden": [8]}},
            {"name": "depth", "head_params": {"out_size": [16, 16], "hidden": [8]}},
            {"name": "normals", "head_params": {"out_size": [16, 16], "hidden": [8]}},
        ],
        "optimizer": {"name": "adam", "params": {"lr": 0.01}},
        "train": {"epochs": 2, "monitor": "loss"},
    }


def test_build_run_train_and_evaluate_dense_tasks(tmp_path: Path) -> None:
    from mtlkit.config import parse_config
    from mtlkit.experiments.run import build_run, evaluate_run, train_run

    run = build_run(dense_config())
    out = run.model(run.data.train.inputs[:2])
    assert out["segmentation"].shape == (2, len(CATEGORIES) + 1, 16, 16)
    assert out["depth"].shape == (2, 1, 16, 16) and out["normals"].shape == (2, 3, 16, 16)
    results = train_run(parse_config(dense_config()), tmp_path / "run", progress=False)
    test = results["test"]
    assert {"miou", "pixel_accuracy"} <= set(test["segmentation"])
    assert {"depth_abs_err", "depth_rel_err"} <= set(test["depth"])
    assert "normal_mean_angle" in test["normals"]
    assert 0.0 <= test["segmentation"]["pixel_accuracy"] <= 1.0
    again = evaluate_run(tmp_path / "run", split="test")
    assert again["depth"]["depth_abs_err"] == pytest.approx(test["depth"]["depth_abs_err"])


def test_ignored_segmentation_pixels_do_not_count(tmp_path: Path) -> None:
    """Pixels labelled −1 give no loss and no gradient, through the Trainer's task check."""
    from mtlkit.experiments.run import build_run

    run = build_run(dense_config())
    task = next(t for t in run.tasks if t.name == "segmentation")
    x, y = run.data.train[torch.arange(4)]
    logits = run.model(x)["segmentation"].detach().requires_grad_(True)
    target = y["segmentation"].clone()
    target[:, :8] = -1
    loss = task.compute_loss(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, :, :8] == 0) and logits.grad[:, :, 8:].abs().sum() > 0
    target[:, 8:] = 255
    # only ignored labels: an exact zero loss that still backpropagates
    assert float(task.compute_loss(logits, target).detach()) == 0.0
