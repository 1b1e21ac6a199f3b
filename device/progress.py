"""Progress of long work (``edgecap ingest``) on stderr, without a dependency.

On a terminal one line is redrawn in place; anywhere else (a pipe, a log file, journald) a plain line
is written every ``every_s`` seconds, so a long run off a terminal is not silent until its end.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, total: int, what: str = "images", *, label: str = "ingest", stream: TextIO | None = None,
                 tty: bool | None = None, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.what, self.label = total, what, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = 0.2 if self.tty else every_s
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_shown = self.started

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self._last_shown >= self.every_s:
            self._last_shown = now
            self._show(now)

    def close(self) -> None:
        self._show(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.label}: {self.done}/{self.total} {self.what} ({pct:.0f}%), {rate:.1f}/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        return text

    def _show(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(now) + "\x1b[K")  # erase what a longer line left
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
