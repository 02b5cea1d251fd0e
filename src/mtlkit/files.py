"""Files written safely and read carefully.

Writing: a reader never sees a half-written file. Every file goes to a temporary name in the
same folder, is flushed and fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), and the folder is fsynced so the rename survives a power cut. A write that
fails (a full disk) removes its temporary file and leaves the old file as it was.

Checksums: :func:`write_synced` and :func:`atomic_write_hashed` return the SHA-256 of the
bytes they wrote, hashed from the same buffers as they go to the file (a checkpoint's manifest
needs no second read of what it just wrote); :func:`write_safetensors` streams tensors into
such a writer straight from their memory, without the copy a serialised buffer would take.
:func:`sha256_file` re-reads a file to check it.

Reading: :func:`read_text` turns a file that is not UTF-8 into a :class:`~mtlkit.errors.MtlkitError`
naming the file and the byte at fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mtlkit.errors import MtlkitError

if TYPE_CHECKING:
    from torch import Tensor


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over it when the block succeeds, removed
    when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class HashingWriter:
    """A binary file handle's ``write`` that also feeds every byte written to a SHA-256."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def write_hashed(path: Path, write: Callable[[HashingWriter], Any], sync: bool = False) -> str:
    """Create ``path`` through ``write(writer)`` (``writer.write(bytes)``) and return the
    SHA-256 of the bytes written (what :func:`sha256_file` would read back); ``sync``: fsync
    it too (else :func:`fsync_files` it before the rename that publishes it)."""
    with open(path, "wb") as handle:
        writer = HashingWriter(handle)
        write(writer)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    return writer.hexdigest()


def write_synced(path: Path, write: Callable[[HashingWriter], Any]) -> str:
    """:func:`write_hashed`, fsynced."""
    return write_hashed(path, write, sync=True)


def fsync_files(paths: Iterable[Path]) -> None:
    """fsync files written before, one after the other: after several files are written, the
    first fsync usually commits them all, and the others find little left to do."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_stream(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Let ``write(handle)`` write a file (a binary handle), fsync it and rename it over
    ``path``; nothing hashed (:func:`atomic_write_hashed` gives the SHA-256)."""
    with _replacing(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_hashed(path: Path, write: Callable[[HashingWriter], Any]) -> str:
    """:func:`write_synced` through a temporary file and a rename (see the module
    docstring): ``path`` is the old file or the new one, never a part of it."""
    with _replacing(path) as tmp:
        return write_synced(tmp, write)


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file, an fsync and a rename; the
    SHA-256 of ``data``."""
    return atomic_write_hashed(path, lambda writer: writer.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, an fsync and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], Any]) -> None:
    """Let ``write(tmp)`` create a file, fsync it, then rename it over ``path``."""
    with _replacing(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())


def atomic_save_tensors(path: Path, tensors: Mapping[str, Tensor]) -> str:
    """Save tensors as safetensors at ``path``, atomically; the file's SHA-256."""
    return atomic_write_hashed(path, lambda writer: write_safetensors(writer, tensors))


#: torch dtype → safetensors' name, in safetensors' order of dtypes (its writer puts the
#: tensors of the last first; https://github.com/huggingface/safetensors, format and Dtype)
_SAFETENSORS_DTYPES = {
    name: (code, rank)
    for rank, (name, code) in enumerate(
        [
            ("bool", "BOOL"),
            ("uint8", "U8"),
            ("int8", "I8"),
            ("float8_e5m2", "F8_E5M2"),
            ("float8_e4m3fn", "F8_E4M3"),
            ("float8_e8m0fnu", "F8_E8M0"),
            ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
            ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
            ("int16", "I16"),
            ("uint16", "U16"),
            ("float16", "F16"),
            ("bfloat16", "BF16"),
            ("int32", "I32"),
            ("uint32", "U32"),
            ("float32", "F32"),
            ("complex64", "C64"),
            ("float64", "F64"),
            ("int64", "I64"),
            ("uint64", "U64"),
        ]
    )
}


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The bytes of a tensor in row-major order, little-endian: a view of its memory when it
    is a contiguous CPU tensor (no copy), else of a contiguous CPU copy."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def write_safetensors(
    writer: HashingWriter | IO[bytes],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (name → tensor) in the safetensors format to ``writer``, each
    tensor's bytes straight from its memory (a copy only of a tensor that is not a
    contiguous CPU tensor).

    The bytes are those of ``safetensors.torch.save`` (8-byte little-endian header length, a
    compact JSON header padded with spaces to a multiple of 8 bytes, then the tensors' bytes
    in safetensors' dtype order, larger items first, by name within a dtype, so that every
    tensor starts aligned to its item size); tensors that share memory are stored each on
    its own.
    """
    if sys.byteorder != "little":  # safetensors is little-endian: let the library swap
        from safetensors.torch import save

        copies = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        writer.write(save(copies, metadata=dict(metadata) if metadata is not None else None))
        return
    entries = []
    for name, tensor in tensors.items():
        known = _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if known is None:
            raise TypeError(
                f"tensor '{name}': dtype {tensor.dtype} cannot be stored as safetensors"
            )
        entries.append((-known[1], name, known[0], tensor))
    entries.sort(key=lambda e: (e[0], e[1]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    start = 0
    for _, name, kind, tensor in entries:
        end = start + tensor.numel() * tensor.element_size()
        header[name] = {"dtype": kind, "shape": list(tensor.shape), "data_offsets": [start, end]}
        start = end
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    writer.write(len(text).to_bytes(8, "little") + text)
    for _, _, _, tensor in entries:
        data = tensor_bytes(tensor)
        if len(data):
            writer.write(data)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_text(
    data: bytes, source: object, what: str = "file", error: type[MtlkitError] = MtlkitError
) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); ``error`` naming
    ``source``, the line and the byte offset when it is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(
            f"{what} {source} is not UTF-8 text (line {line}, byte {err.start}: "
            f"{err.reason}); save it as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark, as spreadsheet programs write


def read_text(path: Path, what: str = "file", error: type[MtlkitError] = MtlkitError) -> str:
    """A UTF-8 text file's contents; ``error`` (a :class:`~mtlkit.errors.MtlkitError`)
    naming the file, and the line and byte at fault, when it cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    return decode_text(data, path, what, error)


class RunLock:
    """A lock file (``.lock``: pid, host, start time) that keeps a second writer out of a
    run folder. A lock left by a process that no longer runs on this host is taken over;
    one held by a live process (or on another host) is an error naming it."""

    NAME = ".lock"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / self.NAME
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (None: nobody, or a process that is gone)."""
        import json
        import socket

        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": "?", "host": "?"}  # half-written by a starting process: held
        if not isinstance(info, dict):
            return {"pid": "?", "host": "?"}
        if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
            return None
        return info

    def acquire(self) -> None:
        import json
        import socket
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is not None:
                    raise MtlkitError(
                        f"run folder {self.path.parent} is in use by process {info.get('pid')} "
                        f"on {info.get('host')} (lock file {self.path}); wait for it to end, "
                        "or remove the lock file if no run is going on"
                    ) from None
                self.path.unlink(missing_ok=True)  # a stale lock: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
                handle.write(json.dumps(info))
            self.held = True
            return
        raise MtlkitError(f"cannot lock run folder {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: assume held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "HashingWriter",
    "RunLock",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_hashed",
    "atomic_write_stream",
    "atomic_write_text",
    "atomic_write_with",
    "decode_text",
    "fsync_dir",
    "fsync_files",
    "read_text",
    "sha256_file",
    "tensor_bytes",
    "write_hashed",
    "write_safetensors",
    "write_synced",
]
