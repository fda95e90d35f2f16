"""Atomic file writes and streamed hashing, used by every part of the project that writes files.

A file written here is either absent or complete: the data goes to a temporary file in the destination folder,
is flushed and fsync'ed, and is then moved over the destination with ``os.replace`` (atomic on POSIX and on
Windows when both paths are on the same volume, which a temporary file in the same folder guarantees). A crash
or an exception part-way leaves the previous file (if any) untouched and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
           "sha256_file", "sha256_bytes", "remove_leftover_temporaries"]


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else by set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX). Best effort: not every platform lets a folder be opened."""
    if os.name != "posix":
        return
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
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is fsync'ed and moved onto ``path``.

    For writers that insist on a file name (h5py, PIL ...). The temporary file exists (empty) when yielded.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(folder)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed, fsync'ed and moved onto
    ``path``. On an exception the destination is left untouched and the temporary file removed."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w', 'wt' and 'wb', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns the path."""
    with atomic_write(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)``, atomically; returns the path."""
    import torch  # local: fileio is also used by code paths that never touch torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def remove_leftover_temporaries(folder: PathLike, pattern: str = ".*.tmp") -> list:
    """Remove the temporary files (``.NAME.*.tmp``, or ``pattern``) that writers here leave in ``folder`` when
    killed before the rename; returns their names. Only for files no other process is writing: their writer holds
    the folder's lock (or, as a case's ranks, owns the pattern)."""
    removed = []
    for p in Path(folder).glob(pattern) if Path(folder).is_dir() else []:
        try:
            p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
