"""Sharded checkpoints (docs/distributed.md, "Checkpoints" under FSDP) in one process: the
files are safetensors and JSON only, every one in the manifest; they load back bitwise; a
damaged shard is an error naming it, and loading falls back to the previous checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtlkit.train.checkpoint import (
    CheckpointError,
    ShardedTensors,
    load_checkpoint,
    read_checkpoint,
    resolve_sharded,
    save_sharded_checkpoint,
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _state(model: nn.Module, epoch: int) -> dict[str, Any]:
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 5)).square().sum().backward()
    opt.step()
    return {
        "epoch": epoch,
        "step": 3 * epoch,
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "best": {"value": 0.5, "epoch": epoch, "bad_epochs": 0},
        "history": [{"epoch": epoch}],
    }


def _save(folder: Path, model: nn.Module, state: dict[str, Any]) -> None:
    save_sharded_checkpoint(folder, model, state, is_main=True, barrier=lambda: None)


def test_a_sharded_checkpoint_is_safetensors_and_json_and_loads_bitwise(tmp_path: Path) -> None:
    model = _model(0)
    state = _state(model, 1)
    folder = tmp_path / "checkpoint"
    _save(folder, model, state)
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files  # no pickle
    manifest = json.loads((folder / "manifest.json").read_text())["sha256"]
    assert set(manifest) == set(files) - {"manifest.json"}
    assert any(f.startswith("shards/") for f in manifest)
    weights, loaded = read_checkpoint(folder)
    assert isinstance(weights, ShardedTensors)
    assert weights.keys("model.") == set(model.state_dict())
    other = _model(1)
    load_checkpoint(folder, other)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    optimizer = resolve_sharded(loaded["optimizer"])
    for index, entry in state["optimizer"]["state"].items():
        for name, value in entry.items():
            assert torch.equal(optimizer["state"][index][name], value), (index, name)
    assert loaded["epoch"] == 1 and loaded["history"] == [{"epoch": 1}]


def test_a_damaged_shard_is_named_and_the_previous_checkpoint_is_used(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    first = _model(0)
    _save(folder, first, _state(first, 1))
    second = _model(2)
    _save(folder, second, _state(second, 2))
    shard = next((folder / "shards").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor's bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=shard.name):
        read_checkpoint(folder)
    target = _model(3)
    with pytest.warns(UserWarning, match=shard.name):
        state = load_checkpoint(folder, target)
    assert state["epoch"] == 1
    for key, value in first.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
