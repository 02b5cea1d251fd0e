"""Truncated and corrupted files of every kind a run folder holds, and a full disk: a clear
error naming the file (exit 2, no traceback), or a fallback to the previous checkpoint; the
run folder unchanged by a refused resume."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mtlkit.cli import main
from mtlkit.files import RunLock
from tests.conftest import small_digits_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("trained")
    cfg = small_digits_config(epochs=3)
    cfg["data"]["params"] = {"n_train": 128, "n_val": 64, "n_test": 64}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp / "run"), "--stop-after", "2"]) == 0
    return path, tmp / "run"


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[1], tmp_path / "run"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # in the tensor data (safetensors) or the closing bytes (JSON)
    path.write_bytes(bytes(data))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage", [truncate, flip])
@pytest.mark.parametrize(
    "name", ["model.safetensors", "state.safetensors", "state.json", "manifest.json"]
)
def test_damaged_checkpoint_falls_back_to_the_previous_one(
    trained: tuple[Path, Path], run: Path, name: str, damage, capsys, recwarn
) -> None:
    damage(run / "checkpoint" / name)
    assert main(["train", str(trained[0]), "--resume", str(run)]) == 0
    warned = " ".join(str(w.message) for w in recwarn)
    assert "checkpoint.prev" in warned and f"checkpoint/{name}" in warned
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in epochs if e] == sorted(e for e in epochs if e) and max(epochs) == 3


@pytest.mark.parametrize("damage", [truncate, flip])
def test_no_usable_checkpoint_is_refused_and_changes_nothing(
    trained: tuple[Path, Path], run: Path, damage, capsys
) -> None:
    damage(run / "checkpoint" / "model.safetensors")
    damage(run / "checkpoint.prev" / "state.json")
    before = snapshot(run)
    assert main(["train", str(trained[0]), "--resume", str(run), "--set", "train.epochs=4"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "model.safetensors" in err and "state.json" in err
    assert snapshot(run) == before  # config.yaml not rewritten, metrics not truncated


def test_damaged_metrics_line_is_an_error_naming_file_and_line(
    trained: tuple[Path, Path], run: Path, capsys
) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["train", str(trained[0]), "--resume", str(run)]) == 2
    assert "metrics.jsonl is damaged at line 1" in capsys.readouterr().err


def test_torn_last_metrics_line_is_dropped(trained: tuple[Path, Path], run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "step", "epo')
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(["train", str(trained[0]), "--resume", str(run)]) == 0


@pytest.mark.parametrize("damage", [truncate, flip])
def test_eval_of_a_damaged_best_model_names_the_file(run: Path, damage, capsys) -> None:
    damage(run / "best" / "model.safetensors")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "best/model.safetensors is damaged" in err and "Traceback" not in err


def test_damaged_saved_config_is_refused(trained: tuple[Path, Path], run: Path, capsys) -> None:
    (run / "config.yaml").write_bytes(b"\xff\xfe: [")
    assert main(["train", str(trained[0]), "--resume", str(run)]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert main(["eval", str(run)]) == 2


def test_a_second_writer_is_locked_out(trained: tuple[Path, Path], run: Path, capsys) -> None:
    with RunLock(run):
        assert main(["train", str(trained[0]), "--resume", str(run)]) == 2
        assert "is in use by process" in capsys.readouterr().err
        assert main(["train", str(trained[0]), "--out", str(run), "--overwrite"]) == 2
    assert not (run / ".lock").exists()


def test_full_disk_leaves_the_old_checkpoint_and_no_temporary_files(
    trained: tuple[Path, Path], run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlkit.train import checkpoint

    before = snapshot(run / "checkpoint")
    real = checkpoint.write_tensors

    def full(writer, tensors, metadata=None):
        if "state.safetensors" in str(getattr(writer, "handle", writer).name):
            writer.write(b"partial")  # a part is on disk when the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(writer, tensors, metadata)

    monkeypatch.setattr(checkpoint, "write_tensors", full)
    with pytest.raises(OSError, match="No space left"):
        main(["train", str(trained[0]), "--resume", str(run)])
    assert snapshot(run / "checkpoint") == before
    assert not list(run.glob(".*.tmp")) and not list((run / "best").glob(".*.tmp"))
    assert not (run / ".lock").exists()
    monkeypatch.setattr(checkpoint, "write_tensors", real)
    assert main(["train", str(trained[0]), "--resume", str(run)]) == 0


def test_full_disk_during_an_atomic_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mtlkit import files

    target = tmp_path / "results.json"
    files.atomic_write_text(target, "old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
