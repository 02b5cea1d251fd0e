"""Files written safely and read carefully.

Writing: a reader never sees a half-written file. Every file goes to a temporary name in the
same folder, is flushed and fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), and the folder is fsynced so the rename survives a power cut. A write that
fails (a full disk) removes its temporary file and leaves the old file as it was.

Reading: :func:`read_text` turns a file that is not UTF-8 into a :class:`~mtlkit.errors.MtlkitError`
naming the file and the byte at fault; :func:`sha256_file` gives the checksums that checkpoints
keep of their own files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, an fsync and a rename."""
    with _replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, an fsync and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], Any]) -> None:
    """Let ``write(tmp)`` create a file, fsync it, then rename it over ``path``."""
    with _replacing(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())


def atomic_save_tensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Save tensors as safetensors at ``path``, atomically."""
    from safetensors.torch import save_file

    atomic_write_with(path, lambda tmp: save_file(dict(tensors), str(tmp)))


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
    "RunLock",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "decode_text",
    "fsync_dir",
    "read_text",
    "sha256_file",
]
