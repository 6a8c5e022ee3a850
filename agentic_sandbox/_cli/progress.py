"""A transfer's progress on stderr, for `cp` (agentic_sandbox._cli.commands).

On a terminal one line updated in place (bytes, rate, time), then a final line; elsewhere
only the final line, and nothing unless forced or stderr is a terminal. Writes to stderr
only: stdout carries the command's own output.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Final

__all__ = ["Progress"]

PROGRESS_INTERVAL_S: Final = 0.25


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class Progress:
    """A transfer's progress on stderr: bytes, rate and time, updated in place on a terminal.

    `advance(n)` as bytes move (the client's transfers call it per piece, through their
    `progress=` argument); leaving the `with` block prints the final line.
    Off unless forced or stderr is a terminal; not a terminal: only the final line.
    """

    def __init__(self, label: str, total: int | None, *, stream: IO[str] | None = None,
                 enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.enabled = self.live if enabled is None else enabled
        self.clock = clock
        self.moved = 0
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self, *, final: bool = False) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        if final:
            return (f"{self.label}: {_size(self.moved)} in {elapsed:.1f} s "
                    f"({_size(self.moved / elapsed)}/s)")
        if self.moved == 0 and self.total is not None:
            return f"{self.label}: {_size(self.total)} ... {elapsed:.1f} s"
        of = f"/{_size(self.total)}" if self.total is not None else ""
        return (f"{self.label}: {_size(self.moved)}{of}  {_size(self.moved / elapsed)}/s  "
                f"{elapsed:.1f} s")

    def _draw(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            self._draw(self.line())

    def __enter__(self) -> Progress:
        self.started = self.clock()
        if self.enabled and self.live:
            self._draw(self.line())
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def advance(self, count: int) -> None:
        self.moved += count

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return
        if exc_type is None:
            text = self.line(final=True)
            self.stream.write(f"\r{text}\x1b[K\n" if self.live else text + "\n")
        elif self.live:
            self.stream.write("\r\x1b[K")
        self.stream.flush()
