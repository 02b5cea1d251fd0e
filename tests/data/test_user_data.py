"""The ``python`` dataset: a factory of the user's (``file.py:function`` or
``module:function``) returning torch Datasets per split, read from disk by DataLoader workers;
the same checks at the boundary as built-in data, each error naming the factory, split, task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlkit.data import DatasetSplit, TensorLoader, load_dataset
from mtlkit.errors import ConfigError, DatasetError

FACTORY = '''
"""Examples stored one file each; a map-style Dataset that reads them on demand."""
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mtlkit import Task


class Files(Dataset):
    def __init__(self, folder):
        self.files = sorted(Path(folder).glob("*.pt"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x, y = torch.load(self.files[i])
        return x, {"sign": int(y[0]), "size": y[1].float()}


def make(root, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", n), ("val", n // 5), ("test", n // 5)):
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            x = torch.randn(6, generator=g)
            y = torch.stack([(x[0] > 0).float(), x[1:3].sum()])
            torch.save((x, y), folder / f"{i:05d}.pt")
    return {s: Files(Path(root) / s) for s in ("train", "val", "test")}


def make_with_tasks(root):
    splits = make(root, n=50)
    splits["tasks"] = [Task("sign", "classification", 2), Task("size", "regression")]
    return splits
'''

TASKS = {"sign": {"kind": "classification", "num_outputs": 2}, "size": "regression"}


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_data.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_file_factory_streams_from_disk(factory: Path) -> None:
    data = load_dataset(
        "python",
        factory="my_data.py:make",
        params={"root": str(factory / "examples"), "n": 40},
        tasks=TASKS,
        num_workers=2,
    )
    assert isinstance(data.train, DatasetSplit) and len(data.train) == 40
    assert data.encoder == ("mlp", {"in_features": 6})
    loader = data.loader("train", 16)
    assert isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers == 2
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [16, 16, 8]
    x, y = batches[0]
    assert (
        x.shape == (16, 6) and y["sign"].dtype == torch.int64 and y["size"].dtype == torch.float32
    )
    # indexed like a TensorSplit: the in-process loaders (sharded, k-fold) work on it too
    xs, ys = data.train[torch.tensor([0, 3])]
    assert xs.shape == (2, 6) and set(ys) == {"sign", "size"}
    assert len(list(TensorLoader(data.train, 16))) == 3
    only = data.select_tasks(["size"])
    assert set(only.train[0][1]) == {"size"} and [t.name for t in only.tasks] == ["size"]


def test_the_factory_may_return_its_tasks(factory: Path) -> None:
    data = load_dataset(
        "python", factory="my_data.py:make_with_tasks", params={"root": str(factory / "e")}
    )
    assert [t.kind for t in data.tasks] == ["classification", "regression"]


def test_train_from_yaml_with_workers(factory: Path) -> None:
    (factory / "config.yaml").write_text(
        "name: files\n"
        "data:\n"
        "  name: python\n"
        "  batch_size: 32\n"
        "  params:\n"
        "    factory: my_data.py:make\n"
        "    params: {root: examples}\n"
        "    num_workers: 2\n"
        "    tasks: {sign: {kind: classification, num_outputs: 2}, size: regression}\n"
        "train: {epochs: 8}\n"
        "optimizer: {name: adam, params: {lr: 0.01}}\n"
    )
    cli = [sys.executable, "-m", "mtlkit", "train", "config.yaml", "--out", "run"]
    done = subprocess.run(cli, cwd=factory, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((factory / "run" / "results.json").read_text())["test"]
    assert test["sign"]["accuracy"] > 0.85  # the sign of one feature (chance: 0.5)
    assert test["size"]["r2"] > 0.8  # the sum of two features


BAD_FACTORIES = {
    "no_split": ("return {'train': [1], 'val': [1]}", r"returned no test split"),
    "not_a_pair": (
        "return {s: [torch.zeros(3)] for s in ('train', 'val', 'test')}",
        r"train split: an example must be \(inputs, \{task: target\}\)",
    ),
    "missing_task": (
        "return {s: [(torch.zeros(3), {'sign': 1})] for s in ('train', 'val', 'test')}",
        r"train split: no target for task\(s\) size",
    ),
    "float_labels": (
        "return {s: [(torch.zeros(3), {'sign': 1.0, 'size': 0.5})] "
        "for s in ('train', 'val', 'test')}",
        r"task 'sign' \(classification\) needs integer class labels",
    ),
    "out_of_range": (
        "return {s: [(torch.zeros(3), {'sign': 2, 'size': 0.5})] "
        "for s in ('train', 'val', 'test')}",
        r"task 'sign': label 2 out of range \[0, 2\)",
    ),
    "empty_val": (
        "return {'train': [(torch.zeros(3), {'sign': 1, 'size': 0.5})], 'val': [], 'test': []}",
        r"the val split is empty",
    ),
    "a_list": ("return [1, 2, 3]", r"must return a DataBundle or a dict"),
}


@pytest.mark.parametrize("name", list(BAD_FACTORIES))
def test_bad_data_is_a_clear_error(tmp_path: Path, name: str) -> None:
    body, message = BAD_FACTORIES[name]
    (tmp_path / f"bad_{name}.py").write_text(f"import torch\n\n\ndef make():\n    {body}\n")
    with pytest.raises(
        DatasetError, match=rf"dataset 'python' \(.*bad_{name}.py:make\).*{message}"
    ):
        load_dataset("python", factory=f"{tmp_path}/bad_{name}.py:make", tasks=TASKS)


def test_bad_factory_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"option 'factory' 'f.py' must be 'module:function'"):
        load_dataset("python", factory="f.py")
    with pytest.raises(ConfigError, match=r"file .*nope.py does not exist"):
        load_dataset("python", factory=f"{tmp_path}/nope.py:make")
    with pytest.raises(ConfigError, match=r"f.py has no function 'make'"):
        load_dataset("python", factory=f"{tmp_path}/f.py:make")
    with pytest.raises(ConfigError, match=r"no module named 'no_such_pkg'"):
        load_dataset("python", factory="no_such_pkg.data:make")
    (tmp_path / "untasked.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))  # the module:function form
    with pytest.raises(DatasetError, match=r"no tasks: return 'tasks' from the factory"):
        load_dataset("python", factory="untasked:make", params={"root": str(tmp_path), "n": 5})
