"""Latency plots for docs/benchmarks.md: a CDF per component, the scale curves, and where a
claim's time goes.

Reads the Result records (their `extra["cdf_ms"]` quantiles; for claims, `extra["stages"]`:
each claim's time in each stage, from bench/claim_milestones.py) and writes PNGs under
docs/bench/. matplotlib is a dev dependency; without it the report says so and goes on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.harness import Result

SCALE_SERIES = {
    # title, x label, component, name pattern with the x value as group 1
    "hooks": ("Warm pool sync latency vs pool size", "pods in the pool", "hooks",
              r"sync warm pool with (\d+) pods"),
    "claims": ("Claim -> Ready vs Sandboxes already in the namespace",
               "existing claims' Sandboxes (+1)", "claims", r"with (\d+) existing"),
}
STAGE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


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
    written += draw_stages(results, directory, plt)
    for key, (title, xlabel, component, pattern) in SCALE_SERIES.items():
        points = sorted(
            (int(match.group(1)) + (1 if key == "claims" else 0), r) for r in results
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


def draw_stages(results: list[Result], directory: Path, plt: Any) -> list[Path]:
    """Where a claim's time goes: per scenario, the mean time in each stage (stacked: the
    means add up to the mean claim -> Ready), and for the load scenarios every claim's stages
    on a timeline of the run (a claim per row, by creation)."""
    staged = [r for r in results if (r.extra.get("stages") or {}).get("rows")]
    if not staged:
        return []
    written = []
    names = staged[0].extra["stages"]["names"]
    figure, rows = plt.subplots(len(staged), 1, figsize=(9, 1.1 + 1.0 * len(staged)),
                                squeeze=False)
    for axes, result in zip(rows[:, 0], staged, strict=True):
        table = result.extra["stages"]["rows"]
        left = 0.0
        for index, name in enumerate(names):
            mean = sum(row[index + 1] for row in table) / len(table)
            axes.barh([0], [mean], left=left, color=STAGE_COLOURS[index % 6], label=name)
            left += mean
        axes.set_yticks([])
        axes.set_title(f"{result.name}: mean {left:.0f} ms", fontsize="small", loc="left")
        axes.set_xlabel("ms", fontsize="small")
    rows[0, 0].legend(fontsize="x-small", ncol=3, loc="lower left", bbox_to_anchor=(0, 1.25))
    figure.tight_layout()
    path = directory / "claims-stages.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    for result in staged:
        table = result.extra["stages"]["rows"]
        if len(table) < 40:
            continue
        step = max(1, len(table) // 600)  # at most ~600 rows drawn
        shown = table[::step]
        figure, axes = plt.subplots(figsize=(9, 5))
        starts = [row[0] / 1e3 for row in shown]
        ys = list(range(len(shown)))
        for index, name in enumerate(names):
            widths = [row[index + 1] / 1e3 for row in shown]
            axes.barh(ys, widths, left=starts, height=1.0, color=STAGE_COLOURS[index % 6],
                      label=name, linewidth=0)
            starts = [s + w for s, w in zip(starts, widths, strict=True)]
        axes.set_xlabel("seconds since the first claim was created")
        axes.set_ylabel(f"claims, by creation (every {step})" if step > 1 else
                        "claims, by creation")
        axes.set_title(result.name, fontsize="small")
        axes.legend(fontsize="x-small", loc="lower right")
        axes.invert_yaxis()
        figure.tight_layout()
        slug = re.sub(r"[^a-z0-9]+", "-", result.name.lower()).strip("-")[:60]
        path = directory / f"claims-timeline-{slug}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
