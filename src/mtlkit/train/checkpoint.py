"""Checkpoints as safetensors plus JSON, written atomically, read with checks; nothing is
ever unpickled.

A checkpoint is a folder with ``model.safetensors`` (the model's weights),
``state.safetensors`` (the tensors of the training state: optimiser moments, RNG streams,
the weighting method's state), ``state.json`` (everything else, with references to those
tensors) and ``manifest.json`` (the SHA-256 of those three files, written last).

Writing: a new checkpoint is written (each file fsynced) to a temporary folder and swapped in
with renames; the one it replaces is kept as ``checkpoint.prev``. A crash at any point leaves
either folder complete.

Reading (:func:`read_checkpoint`): every file is checked against the manifest and parsed
before anything is applied; a damaged checkpoint is an error naming the file, and
:func:`load_checkpoint` then falls back to ``checkpoint.prev`` with a warning.

The selected weights (``best/model.safetensors``, :func:`save_weights`) are one safetensors
file that carries the SHA-256 of its tensors and the epoch in its metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from mtlkit.errors import MtlkitError
from mtlkit.files import atomic_write_with, fsync_dir, sha256_file
from mtlkit.train.state import join_state, split_state

MODEL_FILE, TENSORS_FILE, JSON_FILE = "model.safetensors", "state.safetensors", "state.json"
MANIFEST_FILE = "manifest.json"
PREVIOUS_SUFFIX = ".prev"


class CheckpointError(MtlkitError):
    """A checkpoint or weights file is missing, damaged or does not fit the model; the message
    names the file."""


def model_tensors(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The model's state dict (or a state dict) as contiguous CPU tensors (safetensors needs
    no aliasing)."""
    state = model if isinstance(model, Mapping) else model.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _write_synced(path: Path, write: Any) -> None:
    write(path)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def previous(folder: Path) -> Path:
    """Where the checkpoint before ``folder``'s current one is kept."""
    return folder.with_name(folder.name + PREVIOUS_SUFFIX)


def save_checkpoint(
    folder: Path, model: nn.Module | Mapping[str, Any], state: dict[str, Any]
) -> None:
    """Write ``model`` (or its state dict) and the training ``state`` to ``folder``,
    replacing it atomically and keeping the checkpoint it replaces as ``<folder>.prev``."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    prev = previous(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        skeleton, tensors = split_state(state)
        _write_synced(tmp / MODEL_FILE, lambda p: save_file(model_tensors(model), str(p)))
        _write_synced(tmp / TENSORS_FILE, lambda p: save_file(tensors, str(p)))
        _write_synced(tmp / JSON_FILE, lambda p: p.write_text(json.dumps(skeleton), "utf-8"))
        sums = {name: sha256_file(tmp / name) for name in (MODEL_FILE, TENSORS_FILE, JSON_FILE)}
        manifest = json.dumps({"format": 1, "sha256": sums})
        _write_synced(tmp / MANIFEST_FILE, lambda p: p.write_text(manifest, "utf-8"))
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        if prev.exists():
            os.replace(prev, old)
        os.replace(folder, prev)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model weights and the training state of one checkpoint folder, every file checked
    (manifest checksums, safetensors and JSON parsing); a CheckpointError names the file."""
    folder = Path(folder)
    for name in (MODEL_FILE, JSON_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
    manifest_file = folder / MANIFEST_FILE
    if manifest_file.is_file():  # checkpoints written before manifests have none
        manifest = _read_json(manifest_file, "checkpoint manifest")
        sums = manifest.get("sha256") if isinstance(manifest, dict) else None
        if not isinstance(sums, dict):
            raise CheckpointError(f"checkpoint manifest {manifest_file} is damaged")
        for name, expected in sums.items():
            path = folder / str(name)
            if not path.is_file():
                raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
            if sha256_file(path) != expected:
                raise CheckpointError(f"checkpoint file {path} is damaged (checksum mismatch)")
    weights = _load_tensors(folder / MODEL_FILE, "checkpoint file")
    skeleton = _read_json(folder / JSON_FILE, "checkpoint file")
    tensor_file = folder / TENSORS_FILE
    tensors = _load_tensors(tensor_file, "checkpoint file") if tensor_file.exists() else {}
    try:
        state = join_state(skeleton, tensors)
        for key in ("epoch", "step", "optimizer", "rng", "best", "history"):
            state[key]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"checkpoint file {folder / JSON_FILE} is damaged (entry {err} missing or invalid)"
        ) from None
    return weights, state


def find_checkpoint(folder: Path) -> Path:
    """The checkpoint folder to read: ``folder``, else the previous one (``<folder>.prev``,
    or ``.<folder>.old`` when a swap was cut short), the first that passes the checks; a
    damaged one is skipped with a warning naming the file."""
    return read_newest_checkpoint(Path(folder))[0]


def read_newest_checkpoint(folder: Path) -> tuple[Path, dict[str, Tensor], dict[str, Any]]:
    """The newest checkpoint that passes the checks: its folder, weights and state."""
    problems: list[str] = []
    for candidate in (folder, previous(folder), folder.with_name(f".{folder.name}.old")):
        if not candidate.is_dir():
            continue
        try:
            weights, state = read_checkpoint(candidate)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(
                f"{'; '.join(problems)}; using the previous checkpoint {candidate} "
                f"(epoch {state['epoch']})",
                stacklevel=3,
            )
        return candidate, weights, state
    if problems:
        raise CheckpointError("; ".join(problems) + "; no usable checkpoint is left")
    raise CheckpointError(f"no checkpoint in {folder} (expected {MODEL_FILE} and {JSON_FILE})")


def apply_weights(weights: Mapping[str, Tensor], model: nn.Module, source: Path) -> None:
    """Load ``weights`` into ``model``; a CheckpointError naming ``source`` when they do
    not fit it."""
    missing = model.state_dict().keys() - weights.keys()
    unexpected = sorted(weights.keys() - model.state_dict().keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    try:
        model.load_state_dict(dict(weights), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{source} does not fit the model: {first}") from None


def load_model_weights(folder: Path, model: nn.Module) -> None:
    """Load the weights of a checkpoint or ``best/`` folder into ``model`` (checked)."""
    folder = Path(folder)
    if (folder / JSON_FILE).exists() or (folder / MANIFEST_FILE).exists():
        source, weights, _ = read_newest_checkpoint(folder)
        apply_weights(weights, model, source / MODEL_FILE)
        return
    path = folder / MODEL_FILE
    apply_weights(load_weights(path), model, path)


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load the model weights and return the training state of the newest valid checkpoint
    (see :func:`find_checkpoint`)."""
    source, weights, state = read_newest_checkpoint(Path(folder))
    apply_weights(weights, model, source / MODEL_FILE)
    return state


# ---------------------------------------------------------------------- single weight files


def _digest(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(path: Path, weights: Mapping[str, Tensor], epoch: int | None = None) -> None:
    """Weights as one safetensors file, written atomically, with the SHA-256 of the tensors
    (and the epoch) in its metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {"sha256": _digest(tensors)}
    if epoch is not None:
        meta["epoch"] = str(epoch)
    atomic_write_with(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, checked against the checksum in its metadata (when it
    has one); a CheckpointError names the file."""
    path = Path(path)
    tensors = _load_tensors(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError):
        meta = {}
    if "sha256" in meta and meta["sha256"] != _digest(tensors):
        raise CheckpointError(f"weights file {path} is damaged (checksum mismatch)")
    return tensors


def weights_epoch(path: Path) -> int | None:
    """The epoch recorded in a weights file written by :func:`save_weights` (None: none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            epoch = (handle.metadata() or {}).get("epoch")
    except (SafetensorError, OSError):
        return None
    return int(epoch) if epoch is not None and epoch.isdigit() else None


def _load_tensors(path: Path, what: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{what} {path} is damaged ({err})") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} {path} is damaged ({err})") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {path}: {err}") from None
