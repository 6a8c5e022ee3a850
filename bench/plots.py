"""Latency plots for docs/benchmarks.md: a CDF per component and the scale curves.

Reads the Result records (their `extra["cdf_ms"]` quantiles) and writes PNGs under
docs/bench/. matplotlib is a dev dependency; without it the report says so and goes on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from bench.harness import Result

SCALE_SERIES = {
    # title, x label, component, name pattern with the x value as group 1
    "hooks": ("Warm pool sync latency vs pool size", "pods in the pool", "hooks",
              r"sync warm pool with (\d+) pods"),
    "claims": ("Claim latency vs claims at once", "claims created at once", "claims",
               r"(\d+) claims at once"),
}


def draw(results: list[Result], directory: Path) -> list[Path]:
    """Write the plots; return their paths (empty when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_component: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        if result.extra.get("cdf_ms"):
            by_component[result.component].append(result)
    for component, members in sorted(by_component.items()):
        figure, axes = plt.subplots(figsize=(8, 4.5))
        fractions = [i / 100 for i in range(101)]
        for result in members:
            axes.plot(result.extra["cdf_ms"], fractions, label=result.name)
        axes.set_xscale("log")
        axes.set_xlabel("latency (ms, log scale)")
        axes.set_ylabel("fraction of requests at or below")
        axes.set_title(f"{component}: latency CDF")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
        path = directory / f"cdf-{component}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    for key, (title, xlabel, component, pattern) in SCALE_SERIES.items():
        points = sorted(
            (int(match.group(1)), r) for r in results
            if r.component == component and (match := re.search(pattern, r.name)))
        if len(points) < 2:
            continue
        figure, axes = plt.subplots(figsize=(6, 4))
        xs = [x for x, _ in points]
        for quantile in ("p50", "p99"):
            axes.plot(xs, [getattr(r, quantile) for _, r in points], marker="o", label=quantile)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("latency (ms)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        path = directory / f"scale-{key}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
