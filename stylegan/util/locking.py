"""Advisory locks on what one process at a time may write: a case folder, a calibration progress file, a training
run folder.

A lock is ``flock`` on a small lock file (``fcntl`` on POSIX, ``msvcrt`` on Windows), taken without waiting. The
operating system drops it when its holder exits, however it exits (SIGKILL included), so a lock file left
behind never blocks anyone: it only records who held it last (pid, host, command, time), which is what a
refused second process names in its one-line error. Locks are advisory: they keep our own tools apart, not
other programs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

__all__ = ["LockedError", "exclusive_lock", "lock_holder"]


class LockedError(RuntimeError):
    """Another process holds the lock (its holder is named in the message)."""


def lock_holder(lock_path: Path) -> Optional[Dict[str, Any]]:
    """What the lock file says about its (last) holder, or None when it is missing or unreadable."""
    try:
        info = json.loads(Path(lock_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: Optional[Dict[str, Any]]) -> str:
    if not info:
        return "another process"
    cmd = str(info.get("command", ""))
    cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({cmd})"


def _try_lock(fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_lock(lock_path: Any, what: str) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``lock_path`` for the ``with`` block, or raise :class:`LockedError`
    at once naming the holder. ``what`` names the locked thing in the message ("case folder runs/x")."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise LockedError(f"{what} is in use by {_describe(lock_holder(lock_path))}; wait for it to finish "
                              f"(or stop it) and run again")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        try:
            yield lock_path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
