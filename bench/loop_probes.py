"""Probes of the running claim loop's processes: CPU seconds and resident memory from /proc, and
the API server's count of read requests from its /metrics. Used by bench/claim_cost.py (CPU and
reads per claim over a window) and bench/bench_claims.py (CPU while idle, RSS under load).

Each probe takes the loop (testbed/metacontroller.py's `MetacontrollerStack`) and reads counters
that only grow, so a caller takes the difference of two readings.

It must not: change the loop (it only reads), or assert anything about speed (it measures).
"""

from __future__ import annotations

import contextlib
import os

from bench.harness import rss_mib, tree_pids
from testbed.metacontroller import MetacontrollerStack


def rss(stack: MetacontrollerStack, field: str = "VmRSS") -> dict[str, float]:
    """Resident MiB of the hooks server (master and workers) and of Metacontroller (with
    `field="VmHWM"`: the sum of each process's peak)."""
    out = {}
    for name in ("hooks", "metacontroller"):
        process = stack.processes.get(name)
        if process is not None and process.poll() is None:
            total = 0.0
            for pid in tree_pids(process.pid):
                with contextlib.suppress(OSError, RuntimeError):
                    total += rss_mib(pid, field)
            out[name] = round(total, 1)
    return out


def reads(stack: MetacontrollerStack) -> dict[str, float]:
    """The API server's count of read requests so far, by "verb resource" (its /metrics,
    apiserver_request_total): GETs, LISTs and WATCHes, which the audit log leaves out."""
    totals: dict[str, float] = {}
    for line in stack.plane.get("/metrics").text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in
                      line[line.index("{") + 1:line.index("}")].replace('"', "").split(","))
        if labels.get("verb") in ("GET", "LIST", "WATCH"):
            resource = labels.get("resource", "") + (
                f"/{labels['subresource']}" if labels.get("subresource") else "")
            key = f"{labels['verb']} {resource}"
            totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def cpu(stack: MetacontrollerStack) -> dict[str, float]:
    """CPU seconds (user + system) each part of the loop has used so far, this process (the
    benchmark's client, recorder and kubelet stand-in) included."""
    ticks = os.sysconf("SC_CLK_TCK")
    parts = {**stack.plane.processes, **stack.processes}
    out = {}
    for name, process in parts.items():
        total = 0.0
        for pid in tree_pids(process.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
        out[name] = total
    usage = os.times()
    out["bench client"] = usage.user + usage.system
    return out
