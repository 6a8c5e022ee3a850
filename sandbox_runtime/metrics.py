"""The runtime's metrics: one set of counters, a gauge and a histogram, shared by every worker.

Made once per server by app.create_app() (in gunicorn's master before it forks the workers,
or in the `--stdio` process); updated by commands.py and routes.py (commands, bytes moved),
and by web.py (error answers); GET /metrics answers `exposition()` in Prometheus' text format.

The values live in anonymous shared memory (`mmap`), one row of numbers per process: every
worker forked from the process that made the set writes its own row, and `exposition()` sums
the rows, so the figures are the pod's, whichever worker answers. A process holds its row
with a record lock (slots.py, the same mechanism as the command bound): a worker that dies
frees its row with it, and the worker that takes the row next keeps adding to the counters.
The gauge of a dead worker's row is zeroed (its commands are no longer running) when
gunicorn's master reaps the worker (gunicorn_conf.child_exit -> `forget`), and again when
another process takes the row.

No prometheus_client: it costs about a tenth of a second to import under gVisor's ptrace
platform (the `--stdio` start-up), and its multiprocess mode needs a directory of files per
worker. This module must not block or do IO on an update: it only writes numbers.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
import threading
from collections.abc import Iterator

from sandbox_runtime import errors, slots

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# One row per process that may update at the same time: gunicorn workers are at most 8 (see
# gunicorn_conf.MAX_WORKERS), and a replaced worker takes the row its predecessor freed.
ROWS = 16
VALUE = struct.Struct("d")


class Family:
    """One metric: its name, help, type, and the label values it may carry (fixed, so every
    series has its place in a row: `offset` is the first one's)."""

    def __init__(self, attr: str, name: str, doc: str, kind: str, label: str = "",
                 values: tuple[str, ...] = ("",)) -> None:
        self.attr, self.name, self.doc, self.kind = attr, name, doc, kind
        self.label, self.values = label, values
        self.offset = 0

    def series(self) -> Iterator[tuple[str, str, int]]:
        """(label value, label text, index in a row) of each series."""
        for i, value in enumerate(self.values):
            yield value, (f'{{{self.label}="{value}"}}' if self.label else ""), self.offset + i


ERROR_STATUSES = tuple(str(code) for code in sorted(errors.REASONS) if code >= 400)
FAMILIES = (
    Family("commands", "sandbox_runtime_commands_total", "Commands finished, by outcome",
           "counter", "outcome", ("exit", "timeout")),
    Family("rejected", "sandbox_runtime_commands_rejected_total",
           "Commands refused because the concurrency bound was reached", "counter"),
    Family("killed", "sandbox_runtime_processes_killed_total",
           "Processes killed when commands timed out or were abandoned", "counter"),
    Family("truncated", "sandbox_runtime_output_truncated_total", "Streams cut at the output cap",
           "counter", "stream", ("stdout", "stderr")),
    Family("uploaded", "sandbox_runtime_upload_bytes_total", "Bytes uploaded", "counter"),
    Family("downloaded", "sandbox_runtime_download_bytes_total", "Bytes offered for download",
           "counter"),
    Family("errors", "sandbox_runtime_http_errors_total", "Error answers, by status", "counter",
           "status", ERROR_STATUSES),
    Family("running", "sandbox_runtime_commands_running", "Commands running now", "gauge"),
    # Bucket counts (the last is +Inf), then the sum of the observed values.
    Family("duration", "sandbox_runtime_command_duration_seconds", "Wall time of commands",
           "histogram", "le", (*(str(float(b)) for b in DURATION_BUCKETS), "+Inf", "sum")),
)
WIDTH = 0
for _family in FAMILIES:
    _family.offset, WIDTH = WIDTH, WIDTH + len(_family.values)
OWNER = WIDTH  # after the values, each row holds the pid of the process that writes it
WIDTH += 1
GAUGES = [index for family in FAMILIES if family.kind == "gauge"
          for _, _, index in family.series()]


class Series:
    """What the code updates: one series, or (`labels()`) one of a family's series."""

    def __init__(self, metrics: Metrics, index: int,
                 children: dict[str, Series] | None = None) -> None:
        self._metrics = metrics
        self._index = index
        self._children = children or {}

    @classmethod
    def of(cls, metrics: Metrics, family: Family) -> Series:
        children = {value: cls(metrics, index) for value, _, index in family.series()}
        return cls(metrics, family.offset, children if family.label else None)

    def labels(self, value: str) -> Series:
        return self._children[value]  # KeyError: a label value the family does not declare

    def inc(self, amount: float = 1.0) -> None:
        self._metrics.add(self._index, amount)

    def dec(self, amount: float = 1.0) -> None:
        self._metrics.add(self._index, -amount)


class Histogram:
    def __init__(self, metrics: Metrics, family: Family) -> None:
        self._metrics = metrics
        self._offset = family.offset

    def observe(self, value: float) -> None:
        bucket = next((i for i, bound in enumerate(DURATION_BUCKETS) if value <= bound),
                      len(DURATION_BUCKETS))
        self._metrics.add(self._offset + bucket, 1.0,
                          self._offset + len(DURATION_BUCKETS) + 1, value)


class Metrics:
    """The runtime's metrics (see the module docstring); one attribute per family."""

    def __init__(self) -> None:
        self.commands, self.rejected, self.killed, self.truncated, self.uploaded, \
            self.downloaded, self.errors, self.running = (
                Series.of(self, family) for family in FAMILIES[:-1])
        self.duration = Histogram(self, FAMILIES[-1])
        # MAP_SHARED and anonymous: processes forked from this one see the same pages.
        self._memory = mmap.mmap(-1, ROWS * WIDTH * VALUE.size)
        self._rows = slots.make(ROWS)
        self._lock = threading.Lock()
        self._pid = 0
        self._base = 0

    def _row_base(self) -> int:
        """Called under the lock: this process's row (claimed on its first update)."""
        if self._pid != os.getpid():
            row = self._rows.acquire()
            if row is None:
                # More processes than rows: count here, unseen by the others' exposition.
                log.warning("metrics: no free row; this process's figures are not shared")
                self._memory = mmap.mmap(-1, WIDTH * VALUE.size)
                row = 0
            self._pid, self._base = os.getpid(), row * WIDTH
            self._reset(self._base, self._pid)  # the row's previous owner is gone
        return self._base

    def _reset(self, base: int, owner: int) -> None:
        for index in GAUGES:
            VALUE.pack_into(self._memory, (base + index) * VALUE.size, 0.0)
        VALUE.pack_into(self._memory, (base + OWNER) * VALUE.size, float(owner))

    def forget(self, pid: int) -> None:
        """Process `pid` has ended (gunicorn's master reaped a worker): its gauges no longer
        count. Its counters stay."""
        for base in range(0, len(self._memory) // VALUE.size, WIDTH):
            if VALUE.unpack_from(self._memory, (base + OWNER) * VALUE.size)[0] == pid:
                self._reset(base, 0)

    def add(self, index: int, amount: float, index2: int = -1, amount2: float = 0.0) -> None:
        """Add `amount` to value `index` of this process's row (and `amount2` to `index2`)."""
        with self._lock:
            base = self._row_base()
            for i, value in ((index, amount), (index2, amount2)):
                if i >= 0:
                    at = (base + i) * VALUE.size
                    VALUE.pack_into(self._memory, at, VALUE.unpack_from(self._memory, at)[0]
                                    + value)

    def totals(self) -> list[float]:
        """Every value summed over the rows (all processes, dead ones included)."""
        row = struct.Struct(f"{WIDTH}d")
        sums = [0.0] * WIDTH
        for offset in range(0, len(self._memory), row.size):
            for i, value in enumerate(row.unpack_from(self._memory, offset)):
                sums[i] += value
        return sums

    def exposition(self) -> bytes:
        """The Prometheus text format (0.0.4) of the summed values."""
        sums = self.totals()
        lines: list[str] = []
        for family in FAMILIES:
            lines += [f"# HELP {family.name} {family.doc}", f"# TYPE {family.name} {family.kind}"]
            if family.kind == "histogram":
                lines += _histogram(family, sums)
                continue
            for _, labels, index in family.series():
                if sums[index] or not labels:  # labelled series appear once used
                    lines.append(f"{family.name}{labels} {_number(sums[index])}")
        return ("\n".join(lines) + "\n").encode()


def _histogram(family: Family, sums: list[float]) -> list[str]:
    lines, cumulative = [], 0.0
    *buckets, (_, _, sum_index) = family.series()
    for _, labels, index in buckets:
        cumulative += sums[index]
        lines.append(f"{family.name}_bucket{labels} {_number(cumulative)}")
    return [*lines, f"{family.name}_count {_number(cumulative)}",
            f"{family.name}_sum {_number(sums[sum_index])}"]


def _number(value: float) -> str:
    """A value as Prometheus writes it (1.0, 0.005, +Inf)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))
