"""What the command-line front doors share: the one-line error convention (exit code 2), torch set-up, the
default device, seed lists and turning SIGTERM into an orderly stop."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from typing import Iterator, List

import typer


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself."""


#: Errors that are always the user's input rather than a bug; front doors add their layers' own error types.
BASE_USER_ERRORS = (UsageError, FileNotFoundError, IsADirectoryError, PermissionError)


@contextlib.contextmanager
def user_errors(extra: tuple = ()) -> Iterator[None]:
    """Turn expected bad-input errors into 'error: ...' on one line and exit code 2."""
    try:
        yield
    except BASE_USER_ERRORS + tuple(extra) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)


def setup_torch() -> None:
    import torch  # lazy: the front doors import this module at start-up; torch costs a second, --help needs none

    torch.set_flush_denormal(True)  # denormals make VGG/LPIPS and the generator much slower on CPU


def default_device() -> str:
    import torch  # lazy: see setup_torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """Turn SIGTERM (kill, schedulers, container stops) into KeyboardInterrupt, so that long jobs write their
    snapshot and stop as they do on Ctrl-C; and take SIGINT back when the shell started us with it ignored (a
    background job of a non-interactive shell), so `kill -INT` works there too. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _raise)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def parse_seeds(text: str) -> List[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: List[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"cannot parse seeds {text!r}: use a list like 0-15 or 1,5,9-12")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise UsageError(f"seed range {part!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise UsageError("no seeds given")
    if max(seeds) >= 2**32:
        raise UsageError("seeds must be below 2**32 (numpy RandomState)")
    return seeds


