"""Progress of a long command, on stderr: a rich bar when stderr is a terminal; otherwise (logs, schedulers, CI)
one plain line every few percent, e.g. ``projecting: 40/200 images (20%), 12m03s elapsed, ~48m left``.

Stdout is left alone, so ``--json`` output and progress never mix. One class serves every front door:

    with Progress("projecting", unit="images") as bar:
        run(..., progress=bar)          # bar(done, total) or bar.update(done, total, note="loss 0.12")
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO


def format_duration(seconds: float) -> str:
    """12 -> '12s', 723 -> '12m03s', 7384 -> '2h03m'."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _count(x: float) -> str:
    return f"{int(round(x))}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


class Progress:
    """Progress of one job: ``update(done, total)`` as the job advances (``total`` may change, e.g. once known).

    On a terminal a rich bar is drawn on stderr; elsewhere a line is written each time another ``every_percent``
    of the total is done, at most one line per ``min_interval_s`` seconds (the last line, at 100 %, always), and
    at least one per ``heartbeat_s`` seconds while the job advances. ``enabled=False`` prints nothing (e.g. the
    non-zero ranks of a distributed job). ``terminal`` forces either mode (default: ``stream.isatty()``).
    """

    def __init__(self, description: str, unit: str = "", total: Optional[float] = None, *, enabled: bool = True,
                 every_percent: float = 5.0, min_interval_s: float = 10.0, heartbeat_s: float = 600.0,
                 stream: Optional[TextIO] = None, terminal: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.description = description
        self.unit = unit
        self.total = total
        self.enabled = enabled
        self.every_percent = every_percent
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self._stream = stream
        self._terminal = terminal
        self._clock = clock
        self._bar: Any = None
        self._task: Any = None
        self._t0: Optional[float] = None
        self._done0 = 0.0
        self._done = 0.0
        self._note = ""
        self._last_line_t: Optional[float] = None
        self._last_line_done: Optional[float] = None
        self._last_step = -1
        self._finished_line = False

    # -- context -----------------------------------------------------------------------------------------------

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _is_terminal(self) -> bool:
        if self._terminal is not None:
            return self._terminal
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def __enter__(self) -> "Progress":
        if self.enabled and self._is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                     TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, count="", note="")
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, *exc)
            self._bar = None
        elif (exc_type is None and self.enabled and not self._finished_line and self._last_line_t is not None
              and self._done != self._last_line_done):
            self._line()  # where the job stopped short of 100 %, when the last line did not say so

    # -- updates -----------------------------------------------------------------------------------------------

    def __call__(self, done: float, total: Optional[float] = None) -> None:
        self.update(done, total)

    def update(self, done: float, total: Optional[float] = None, note: Optional[str] = None) -> None:
        """The job has done ``done`` of ``total`` units (``total=None``: unchanged); ``note`` is shown beside."""
        if not self.enabled:
            return
        now = self._clock()
        if total is not None:
            self.total = total
        if note is not None:
            self._note = note
        first = self._t0 is None
        if first:  # rates count from the first update: a resumed job starts part-way
            self._t0, self._done0 = now, float(done)
        self._done = float(done)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, note=self._note, count=self._count_text())
            return
        if not self.total:
            return
        fraction = min(max(self._done / self.total, 0.0), 1.0)
        step = int(fraction * 100 // self.every_percent) if self.every_percent > 0 else 0
        if first:
            self._last_step = step  # a line each time the job crosses the next step from here
        last = self._last_line_t if self._last_line_t is not None else self._t0
        finished = fraction >= 1.0
        if finished and not self._finished_line:
            self._line(now)
            self._finished_line = True
        elif ((step > self._last_step and now - last >= self.min_interval_s)
              or (now - last >= self.heartbeat_s and self._done > self._done0)):
            self._line(now)
        if step > self._last_step and self._last_line_t == now:
            self._last_step = step

    def print(self, message: str) -> None:
        """A line of its own on stderr (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    # -- plain lines -------------------------------------------------------------------------------------------

    def _count_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            return f"{_count(self._done)}/{_count(self.total)}{unit}"
        return f"{_count(self._done)}{unit}"

    def line(self, now: Optional[float] = None) -> str:
        """The plain progress line, e.g. 'projecting: 40/200 images (20%), 12m03s elapsed, ~48m left'."""
        now = self._clock() if now is None else now
        elapsed = now - (self._t0 if self._t0 is not None else now)
        parts = [f"{self.description}: {self._count_text()}"]
        if self.total:
            parts[0] += f" ({100 * self._done / self.total:.0f}%)"
        parts.append(f"{format_duration(elapsed)} elapsed")
        advanced = self._done - self._done0
        if self.total and advanced > 0 and self._done < self.total:
            parts.append(f"~{format_duration(elapsed / advanced * (self.total - self._done))} left")
        text = ", ".join(parts)
        return f"{text}, {self._note}" if self._note else text

    def _line(self, now: Optional[float] = None) -> None:
        now = self._clock() if now is None else now
        print(self.line(now), file=self.stream, flush=True)
        self._last_line_t, self._last_line_done = now, self._done


__all__ = ["Progress", "format_duration"]
