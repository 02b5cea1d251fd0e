"""Checkpoints as safetensors plus JSON, written atomically, read with checks; nothing is
ever unpickled.

A checkpoint is a folder with ``model.safetensors`` (the model's weights),
``state.safetensors`` (the tensors of the training state: optimiser moments, RNG streams,
the weighting method's state), ``state.json`` (everything else, with references to those
tensors) and ``manifest.json`` (the SHA-256 of those three files, written last).

Writing: a new checkpoint is written to a temporary folder (every file fsynced before the
manifest is written, the manifest and the folder fsynced before the swap) and swapped in with
renames; the one it replaces is kept as ``checkpoint.prev``. A crash at any point leaves
either folder complete. Each file's SHA-256 is computed from the bytes as they are written
(:func:`mtlkit.files.write_hashed`), and tensors go to the file straight from their memory
(:func:`mtlkit.files.write_safetensors`): no copy of the weights, no second read of the files.

Reading (:func:`read_checkpoint`): every file is checked against the manifest and parsed
before anything is applied; a damaged checkpoint is an error naming the file, and
:func:`load_checkpoint` then falls back to ``checkpoint.prev`` with a warning.

The selected weights (``best/model.safetensors``, :func:`save_weights`) are one safetensors
file that carries the SHA-256 of its tensors and the epoch in its metadata.

Sharded checkpoints (``train.strategy: fsdp``, :func:`save_sharded_checkpoint`): every rank
writes its own shards through ``torch.distributed.checkpoint`` (DCP) with its Hugging Face
storage writer: ``shards/shard-<rank+1>-model-00001-of-00001.safetensors`` per rank, holding
the model's tensors (``model.<name>``) and the optimiser's sharded tensors
(``optimizer.<index>.<name>``), each with its offsets in the global tensor in the
safetensors metadata (JSON). There is no ``model.safetensors``; ``state.safetensors``,
``state.json`` and ``manifest.json`` (which then also covers the shards) are written by rank 0
as above. The folder has no pickled ``.metadata`` and no ``.distcp`` file: DCP's default
writer would write both, its Hugging Face reader needs neither (it rebuilds the layout from the
safetensors headers), so nothing is unpickled on load either. A sharded checkpoint loads into
a sharded model of any world size (DCP reads the overlap of the saved chunks and each rank's
new shard) and into a whole model in one process (:func:`apply_weights`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor, nn

from mtlkit.errors import MtlkitError
from mtlkit.files import (
    HashingWriter,
    atomic_write_stream,
    fsync_dir,
    fsync_files,
    sha256_file,
    tensor_bytes,
    write_hashed,
    write_safetensors,
    write_synced,
)
from mtlkit.train.state import join_state, split_state

MODEL_FILE, TENSORS_FILE, JSON_FILE = "model.safetensors", "state.safetensors", "state.json"
MANIFEST_FILE = "manifest.json"
PREVIOUS_SUFFIX = ".prev"
SHARDS_DIR = "shards"
#: the JSON marker of an optimiser tensor stored in the shards
SHARDED = "__sharded__"


class CheckpointError(MtlkitError):
    """A checkpoint or weights file is missing, damaged or does not fit the model; the message
    names the file."""


def model_tensors(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the model's state dict (or of a state dict) as contiguous CPU tensors, that
    later steps do not change (the best epoch's weights)."""
    state = model if isinstance(model, Mapping) else model.state_dict()
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in state.items()
    }


def write_tensors(
    writer: HashingWriter | IO[bytes],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Tensors as safetensors into ``writer`` (:func:`mtlkit.files.write_safetensors`): the
    one place this module writes tensors, where the fault tests interrupt a write."""
    write_safetensors(writer, tensors, metadata)


def previous(folder: Path) -> Path:
    """Where the checkpoint before ``folder``'s current one is kept."""
    return folder.with_name(folder.name + PREVIOUS_SUFFIX)


def save_checkpoint(
    folder: Path, model: nn.Module | Mapping[str, Any], state: dict[str, Any]
) -> None:
    """Write ``model`` (or its state dict) and the training ``state`` to ``folder``,
    replacing it atomically and keeping the checkpoint it replaces as ``<folder>.prev``."""
    folder = Path(folder)
    tmp = _fresh_tmp(folder)
    weights = model if isinstance(model, Mapping) else model.state_dict()
    try:
        digest = write_hashed(tmp / MODEL_FILE, lambda w: write_tensors(w, weights))
        _write_state(tmp, state, {MODEL_FILE: digest})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, folder)


def _fresh_tmp(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _write_state(tmp: Path, state: dict[str, Any], written: Mapping[str, str]) -> None:
    """``state.safetensors``, ``state.json``, then the manifest of every file in ``tmp``:
    the SHA-256 of each file written here and in ``written`` (name → SHA-256, from the bytes
    as they were written; those files are fsynced here), and of the files others wrote in
    ``tmp`` (the shards), read back."""
    skeleton, tensors = split_state(state)
    sums = dict(written)
    sums[TENSORS_FILE] = write_hashed(tmp / TENSORS_FILE, lambda w: write_tensors(w, tensors))
    text = json.dumps(skeleton).encode("utf-8")
    sums[JSON_FILE] = write_hashed(tmp / JSON_FILE, lambda w: w.write(text))
    # every file durable before the manifest that vouches for them (fsynced together: the
    # first commit usually carries them all)
    fsync_files(tmp / name for name in sums)
    for f in tmp.rglob("*"):
        name = str(f.relative_to(tmp))
        if name not in sums and f.is_file() and f.name != MANIFEST_FILE:
            sums[name] = sha256_file(f)
    manifest = json.dumps({"format": 1, "sha256": dict(sorted(sums.items()))}).encode("utf-8")
    write_synced(tmp / MANIFEST_FILE, lambda w: w.write(manifest))
    if (tmp / SHARDS_DIR).is_dir():
        fsync_dir(tmp / SHARDS_DIR)
    fsync_dir(tmp)


def _swap_in(tmp: Path, folder: Path) -> None:
    """``tmp`` becomes ``folder``; the checkpoint there becomes ``<folder>.prev``."""
    old = folder.with_name(f".{folder.name}.old")
    prev = previous(folder)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        if prev.exists():
            os.replace(prev, old)
        os.replace(folder, prev)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- sharded checkpoints


@dataclass(frozen=True)
class ShardedTensors:
    """The tensors of a sharded checkpoint's ``shards/`` folder (read on demand)."""

    folder: Path

    def keys(self, prefix: str = "") -> set[str]:
        """The names of the stored (global) tensors that start with ``prefix``, without it."""
        return {
            k[len(prefix) :] for k in self._metadata().state_dict_metadata if k.startswith(prefix)
        }

    def _metadata(self) -> Any:
        from torch.distributed.checkpoint import HuggingFaceStorageReader

        return HuggingFaceStorageReader(str(self.folder)).read_metadata()

    def load(self, targets: dict[str, Tensor]) -> None:
        """Fill ``targets`` (name → tensor: whole, or a DTensor whose shard this rank reads)
        in place from the shards. With any DTensor target it is a collective: every rank
        calls it with the same names."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor

        sharded = any(isinstance(t, DTensor) for t in targets.values())
        reader = dcp.HuggingFaceStorageReader(str(self.folder))
        try:
            with warnings.catch_warnings():  # DCP warns that it loads in a single process
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
                dcp.load(
                    targets,
                    storage_reader=reader,
                    no_dist=not (sharded and dist.is_available() and dist.is_initialized()),
                )
        except Exception as err:  # DCP wraps each rank's failure
            first = str(err).strip().splitlines()[-1].strip() if str(err).strip() else ""
            raise CheckpointError(
                f"checkpoint shards {self.folder} do not load: {type(err).__name__} {first}"
            ) from None

    def whole(self, prefix: str = "", keys: set[str] | None = None) -> dict[str, Tensor]:
        """The tensors whose names start with ``prefix`` (stripped) or, given ``keys``,
        those, whole, in this process."""
        meta = self._metadata().state_dict_metadata
        targets = {
            k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
            for k, m in meta.items()
            if (k in keys if keys is not None else k.startswith(prefix))
        }
        self.load(targets)
        return {k[len(prefix) :]: v for k, v in targets.items()}


@dataclass(frozen=True)
class ShardedRef:
    """A tensor of the training state stored in a sharded checkpoint's shards."""

    tensors: ShardedTensors
    key: str


def save_sharded_checkpoint(
    folder: Path | None,
    model: nn.Module,
    state: dict[str, Any],
    *,
    is_main: bool,
    barrier: Callable[[], None],
) -> None:
    """Write a sharded checkpoint (see the module docstring) to ``folder``; every rank calls
    it (``folder`` the same everywhere). The optimiser's DTensor entries in
    ``state["optimizer"]`` and the model's state dict go to the shards, each rank its own;
    rank 0 (``is_main``) writes the rest, the manifest, and swaps the folder in."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save
    from torch.distributed.tensor import DTensor

    if folder is None:
        return
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if is_main:
        _fresh_tmp(folder)
    barrier()
    tensors: dict[str, Any] = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
    optimizer = dict(state["optimizer"])
    entries: dict[Any, Any] = {}
    for index, entry in optimizer["state"].items():
        entries[index] = {}
        for name, value in entry.items():
            if isinstance(value, DTensor):
                key = f"optimizer.{index}.{name}"
                tensors[key] = value
                entries[index][name] = {SHARDED: key}
            else:
                entries[index][name] = value
    optimizer["state"] = entries
    try:
        with warnings.catch_warnings():  # DCP warns when it saves in a single process
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            save(
                tensors,
                storage_writer=HuggingFaceStorageWriter(
                    str(tmp / SHARDS_DIR), save_distributed=True
                ),
            )
        barrier()  # every rank's shard file is on disk
        if is_main:
            _write_state(tmp, {**state, "optimizer": optimizer}, {})
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if is_main:
        _swap_in(tmp, folder)
    barrier()


def _sharded_refs(state: Any, tensors: ShardedTensors) -> Any:
    """``state`` with each ``{"__sharded__": key}`` marker replaced by a :class:`ShardedRef`."""
    if isinstance(state, dict):
        if set(state) == {SHARDED}:
            return ShardedRef(tensors, str(state[SHARDED]))
        return {k: _sharded_refs(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [_sharded_refs(v, tensors) for v in state]
    return state


def resolve_sharded(state: Any, like: Callable[[ShardedRef], Tensor] | None = None) -> Any:
    """``state`` with every :class:`ShardedRef` read from the shards: into ``like(ref)`` (a
    tensor of the shape to fill, e.g. a DTensor shard; then a collective), else whole."""
    refs: list[ShardedRef] = []

    def find(obj: Any) -> None:
        if isinstance(obj, ShardedRef):
            refs.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                find(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                find(v)

    find(state)
    if not refs:
        return state
    if like is None:
        values = refs[0].tensors.whole(keys={ref.key for ref in refs})
    else:
        values = {ref.key: like(ref) for ref in refs}
        refs[0].tensors.load(values)

    def swap(obj: Any) -> Any:
        if isinstance(obj, ShardedRef):
            return values[obj.key]
        if isinstance(obj, dict):
            return {k: swap(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [swap(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(swap(v) for v in obj)
        return obj

    return swap(state)


def read_checkpoint(
    folder: Path,
) -> tuple[dict[str, Tensor] | ShardedTensors, dict[str, Any]]:
    """The model weights and the training state of one checkpoint folder, every file checked
    (manifest checksums, safetensors and JSON parsing); a CheckpointError names the file.

    A sharded checkpoint gives its :class:`ShardedTensors` for the weights, and
    :class:`ShardedRef` leaves in the state where its tensors are in the shards (see
    :func:`resolve_sharded`)."""
    folder = Path(folder)
    shards = folder / SHARDS_DIR
    for name in (SHARDS_DIR if shards.is_dir() else MODEL_FILE, JSON_FILE):
        if not (folder / name).exists():
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
    weights: dict[str, Tensor] | ShardedTensors
    if shards.is_dir():
        if not manifest_file.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {MANIFEST_FILE} is missing")
        weights = ShardedTensors(shards)
        _check_shards(weights)
    else:
        weights = _load_tensors(folder / MODEL_FILE, "checkpoint file")
    skeleton = _read_json(folder / JSON_FILE, "checkpoint file")
    tensor_file = folder / TENSORS_FILE
    tensors = _load_tensors(tensor_file, "checkpoint file") if tensor_file.exists() else {}
    try:
        state = join_state(skeleton, tensors)
        for key in ("epoch", "step", "optimizer", "rng", "best", "history"):
            state[key]
        if isinstance(weights, ShardedTensors):
            state = _sharded_refs(state, weights)
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


def _check_shards(tensors: ShardedTensors) -> None:
    """The shard files parse (safetensors headers, DCP offsets): a CheckpointError if not."""
    files = sorted(tensors.folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint shards {tensors.folder} hold no safetensors file")
    try:
        tensors.keys()
    except Exception as err:
        raise CheckpointError(f"checkpoint shards {tensors.folder} are damaged ({err})") from None


def read_newest_checkpoint(
    folder: Path,
) -> tuple[Path, dict[str, Tensor] | ShardedTensors, dict[str, Any]]:
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


def apply_weights(
    weights: Mapping[str, Tensor] | ShardedTensors, model: nn.Module, source: Path
) -> None:
    """Load ``weights`` into ``model``; a CheckpointError naming ``source`` when they do
    not fit it. Sharded weights go straight into a sharded model's shards (a collective:
    every rank calls it), or whole into a model that is not sharded."""
    if isinstance(weights, ShardedTensors):
        saved = weights.keys("model.")
        current = model.state_dict()
        missing, unexpected = current.keys() - saved, sorted(saved - current.keys())
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        targets = {f"model.{k}": v.detach() for k, v in current.items()}
        weights.load(targets)
        weights = {k[len("model.") :]: v for k, v in targets.items()}
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
        apply_weights(weights, model, source / _weights_name(weights))
        return
    path = folder / MODEL_FILE
    apply_weights(load_weights(path), model, path)


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load the model weights and return the training state of the newest valid checkpoint
    (see :func:`find_checkpoint`)."""
    source, weights, state = read_newest_checkpoint(Path(folder))
    apply_weights(weights, model, source / _weights_name(weights))
    return state


def _weights_name(weights: Mapping[str, Tensor] | ShardedTensors) -> str:
    return SHARDS_DIR if isinstance(weights, ShardedTensors) else MODEL_FILE


# ---------------------------------------------------------------------- single weight files


def _digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the tensors: each one's name, dtype, shape and bytes, in name order (read
    from the tensors' memory, copied only when not contiguous on the CPU)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        digest.update(key.encode("utf-8"))
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(tensor_bytes(t))
    return digest.hexdigest()


def save_weights(path: Path, weights: Mapping[str, Tensor], epoch: int | None = None) -> None:
    """Weights as one safetensors file, written atomically, with the SHA-256 of the tensors
    (and the epoch) in its metadata."""
    meta = {"sha256": _digest(weights)}
    if epoch is not None:
        meta["epoch"] = str(epoch)
    atomic_write_stream(Path(path), lambda handle: write_tensors(handle, weights, meta))


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
