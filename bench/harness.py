"""Shared measuring tools for the benchmark modules: timing loops, percentiles, results.

Figures are medians over repeated rounds (this machine is shared and noisy); comparisons
to a floor are ratios taken in the same run, never across runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """One benchmark figure set, as it appears in results.json and the docs table."""

    component: str
    name: str
    unit: str  # unit of the latency percentiles ("ms") or of `value`
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    throughput: float | None = None  # per second
    throughput_unit: str = ""
    peak_rss_mib: float | None = None
    goal: str = ""
    met: bool | None = None
    floor_name: str = ""
    ratio_to_floor: float | None = None
    samples: int = 0
    rounds: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What the runner hands every benchmark module."""

    quick: bool = False  # fewer repetitions, for a smoke run
    options: dict[str, str] = field(default_factory=dict)  # `--opt key=value`, per benchmark

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def option(self, key: str, full: str, quick: str | None = None) -> str:
        """An `--opt key=value` if given, else the full run's or the quick run's default."""
        if key in self.options:
            return self.options[key]
        return quick if self.quick and quick is not None else full


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[rank]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99, max and mean of unsorted samples; empty if there are none."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {q: percentile(ordered, float(q[1:])) for q in ("p50", "p95", "p99")} | {
        "max": ordered[-1], "mean": statistics.fmean(ordered)}

class Skipped(Exception):
    """A benchmark that cannot run here (a missing binary, say); the reason is reported."""


class Broken(Exception):
    """A benchmark whose run broke a correctness rule (a pod shared by two claims, say): its
    figures are still recorded, and the run fails (`make bench` exits non-zero)."""

    def __init__(self, message: str, results: list[Result]) -> None:
        super().__init__(message)
        self.results = results


@dataclass
class Latencies:
    """Per-round p50/p95/p99 (seconds), reduced to medians across rounds; all samples kept
    for the CDF plots."""

    rounds: list[dict[str, float]] = field(default_factory=list)
    pooled: list[float] = field(default_factory=list)

    def add_round(self, samples: list[float]) -> None:
        ordered = sorted(samples)
        self.pooled.extend(samples)
        self.rounds.append(
            {q: percentile(ordered, float(q[1:])) for q in ("p50", "p95", "p99")}
            | {"n": float(len(samples))}
        )

    def cdf_ms(self, points: int = 101) -> list[float]:
        """The pooled samples' quantiles 0, 1, ..., 100 % in milliseconds (for plots)."""
        ordered = sorted(self.pooled)
        return [round(percentile(ordered, 100 * i / (points - 1)) * 1e3, 4)
                for i in range(points)]

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)

    @property
    def samples(self) -> int:
        return int(sum(r["n"] for r in self.rounds))


def time_calls(
    call: Callable[[], object], *, iterations: int, rounds: int, warmup: int = 20
) -> Latencies:
    """Time `call` `iterations` times per round, after a warm-up; seconds per call."""
    for _ in range(warmup):
        call()
    result = Latencies()
    for _ in range(rounds):
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        result.add_round(samples)
    return result


def latency_result(component: str, name: str, lat: Latencies, **kwargs: Any) -> Result:
    """A Result in milliseconds from round medians of p50/p95/p99, with its CDF points."""
    extra = dict(kwargs.pop("extra", None) or {})
    if lat.pooled:
        extra["cdf_ms"] = lat.cdf_ms()
    return Result(
        component=component,
        name=name,
        unit="ms",
        p50=lat.median("p50") * 1e3,
        p95=lat.median("p95") * 1e3,
        p99=lat.median("p99") * 1e3,
        samples=lat.samples,
        rounds=len(lat.rounds),
        extra=extra,
        **kwargs,
    )


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of a process (and not its children), in MiB; `field="VmHWM"` gives
    its peak so far."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found
