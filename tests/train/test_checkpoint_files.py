"""Checkpoint files written in one pass: the SHA-256 computed while writing is the file's,
the streamed safetensors are the library's own bytes, and damage is still detected."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save

from mtlkit.files import (
    HashingWriter,
    atomic_save_tensors,
    atomic_write_bytes,
    sha256_file,
    write_safetensors,
    write_synced,
)
from mtlkit.train.checkpoint import (
    CheckpointError,
    load_weights,
    model_tensors,
    read_checkpoint,
    save_checkpoint,
    save_weights,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    return {
        "w": torch.randn(5, 3, generator=g),
        "transposed": base.t(),  # not contiguous
        "strided": base[::2],  # not contiguous
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "half": torch.randn(3, generator=g).half(),
        "double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "steps": torch.arange(7),
        "small": torch.arange(5, dtype=torch.int8),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(4, dtype=torch.uint8),
        "i16": torch.arange(3, dtype=torch.int16),
        "i32": torch.arange(3, dtype=torch.int32).reshape(3, 1),
        "c64": torch.randn(2, generator=g, dtype=torch.complex64),
        "f8": torch.randn(3, generator=g).to(torch.float8_e4m3fn),
        "f8b": torch.randn(2, generator=g).to(torch.float8_e5m2),
        "f8c": torch.randn(2, generator=g).to(torch.float8_e4m3fnuz),
        "empty": torch.empty(0, 3),
    }


def _serialised(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    buffer = io.BytesIO()
    writer = HashingWriter(buffer)
    write_safetensors(writer, tensors, metadata)
    data = buffer.getvalue()
    assert writer.hexdigest() == hashlib.sha256(data).hexdigest()
    return data


@pytest.mark.parametrize("metadata", [None, {"epoch": "3"}])
def test_streamed_safetensors_are_the_librarys_bytes(metadata: dict[str, str] | None) -> None:
    tensors = _tensors()
    data = _serialised(tensors, metadata)
    reference = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    assert data == reference
    back = load(data)
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


def test_tensors_that_share_memory_are_stored_each_on_its_own() -> None:
    weight = torch.randn(4, 4)
    data = _serialised({"encoder": weight, "decoder": weight, "view": weight[1]}, None)
    back = load(data)
    assert torch.equal(back["encoder"], weight) and torch.equal(back["decoder"], weight)
    assert torch.equal(back["view"], weight[1])


def test_an_unsupported_dtype_is_an_error_naming_the_tensor() -> None:
    with pytest.raises(TypeError, match="'z'"):
        _serialised({"z": torch.zeros(2, dtype=torch.complex128)}, None)


def test_the_hash_computed_while_writing_is_the_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    parts = [data[:1000], memoryview(data)[1000:], b""]
    digest = write_synced(tmp_path / "f", lambda w: [w.write(p) for p in parts])
    assert digest == sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert atomic_write_bytes(tmp_path / "g", data) == sha256_file(tmp_path / "g")
    digest = atomic_save_tensors(tmp_path / "t.safetensors", _tensors())
    assert digest == sha256_file(tmp_path / "t.safetensors")
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["strided"], _tensors()["strided"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "g", "t.safetensors"]


def _state() -> dict[str, object]:
    return {
        "epoch": 2,
        "step": 40,
        "optimizer": {
            "state": {0: {"exp_avg": torch.arange(6.0).reshape(3, 2).t()}},
            "param_groups": [],
        },
        "rng": {"torch": torch.arange(4, dtype=torch.uint8)},
        "best": {"epoch": 1},
        "history": [{"epoch": 1}],
    }


def test_checkpoint_manifest_holds_each_files_sha256(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    save_checkpoint(tmp_path / "checkpoint", model, _state())
    folder = tmp_path / "checkpoint"
    manifest = json.loads((folder / "manifest.json").read_text())["sha256"]
    files = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    assert sorted(manifest) == files
    for name, digest in manifest.items():
        assert digest == sha256_file(folder / name), name
    weights, state = read_checkpoint(folder)
    assert isinstance(weights, dict)
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor)
    exp_avg = torch.arange(6.0).reshape(3, 2).t()
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], exp_avg)
    assert torch.equal(state["rng"]["torch"], torch.arange(4, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors", "state.json"])
def test_a_corrupted_checkpoint_file_is_detected(tmp_path: Path, name: str) -> None:
    model = torch.nn.Linear(64, 32)
    save_checkpoint(tmp_path / "checkpoint", model, _state())
    path = tmp_path / "checkpoint" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle (tensor bytes or JSON)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name} is damaged"):
        read_checkpoint(tmp_path / "checkpoint")


def _old_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The checksum as weights files written before carry it (copied bytes, name order)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_weights_file_checksum_is_unchanged_and_checked(tmp_path: Path) -> None:
    from safetensors import safe_open

    tensors = _tensors()
    path = tmp_path / "model.safetensors"
    save_weights(path, tensors, epoch=4)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta == {"sha256": _old_digest(tensors), "epoch": "4"}
    back = load_weights(path)
    for name, tensor in tensors.items():
        assert torch.equal(back[name], tensor), name
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # in the tensor bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_weights(path)


def test_model_tensors_is_a_copy_that_training_does_not_change() -> None:
    model = torch.nn.Linear(3, 2)
    kept = model_tensors(model)
    before = {k: v.clone() for k, v in kept.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    for name, tensor in kept.items():
        assert tensor.is_contiguous() and torch.equal(tensor, before[name])
    transposed = model_tensors({"t": torch.randn(3, 4).t()})["t"]
    assert transposed.is_contiguous()


def test_state_sequences_of_scalars_come_back_as_they_were() -> None:
    from mtlkit.train.state import join_state, split_state

    state = {
        "python": (3, tuple(range(625)), None),
        "flags": [True, None, 1.5, "x"],
        "mixed": (1, torch.arange(3), [2, (3, 4)]),
    }
    skeleton, tensors = split_state(state)
    back = join_state(json.loads(json.dumps(skeleton)), tensors)
    assert back["python"] == state["python"] and isinstance(back["python"][1], tuple)
    assert back["flags"] == state["flags"] and isinstance(back["flags"], list)
    assert back["mixed"][0] == 1 and torch.equal(back["mixed"][1], torch.arange(3))
    assert back["mixed"][2] == [2, (3, 4)]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_every_checkpoint_file_is_fsynced_before_the_folder_is_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "checkpoint", torch.nn.Linear(3, 2), _state())
    swap = events.index(("replace", str(tmp_path / ".checkpoint.tmp")))
    synced = {Path(path).name for kind, path in events[:swap] if kind == "fsync"}
    files = {"model.safetensors", "state.safetensors", "state.json", "manifest.json"}
    assert files | {".checkpoint.tmp"} <= synced  # the files, and the folder holding them
    assert ("fsync", str(tmp_path)) in events[swap:]  # the rename, once done
    manifest = max(
        i
        for i, e in enumerate(events)
        if e == ("fsync", str(tmp_path / ".checkpoint.tmp" / "manifest.json"))
    )
    for name in files - {"manifest.json"}:
        first = events.index(("fsync", str(tmp_path / ".checkpoint.tmp" / name)))
        assert first < manifest, name
