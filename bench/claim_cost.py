"""What the claim benchmark's load cost the loop over a measured window: every write by client,
verb and resource from the API server's audit log, the 409 Conflicts among them, reads from the
API server's /metrics, hook calls and hook times from the hooks' access log, Metacontroller's
"outdated resourceVersion" log lines, and CPU seconds per process. Used by bench/claimlab.py (a
`Lab` keeps one `Meter`) and, through `lab.meter`, by bench/bench_claims.py and
bench/ab_claims.py.

A `Window` notes where the logs and counters stood when a window began; `Meter.cost` reads
everything after it and divides by the claims made.

It must not: write to the loop or its logs (it only reads), or assert anything about speed (it
measures).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import loop_probes
from testbed.metacontroller import MetacontrollerStack

KUBELET_AGENT = "kubelet-stand-in"  # the kubelet stand-in's user agent, to tell its writes apart

ACCESS_MS = re.compile(r" (\d+)ms\"?\}?$")  # the access log's last field, whole milliseconds


def agent_of(entry: dict[str, Any]) -> str:
    agent = str(entry.get("userAgent", ""))
    if agent.startswith("metacontroller"):
        return "metacontroller"
    if agent.startswith(KUBELET_AGENT):
        return "kubelet"
    if agent.startswith("kube-controller-manager"):
        return "controller-manager"
    if agent.startswith("kubectl"):
        return "kubectl"
    return "bench"


def audit_writes(path: Path, offset: int, namespace: str,
                 end: int | None = None) -> dict[str, Any]:
    """Writes logged from byte `offset` (to `end`) in `namespace`: counts by client and
    "verb resource[/subresource]", and the 409 Conflicts (AlreadyExists is not one)."""
    counts: Counter[str] = Counter()
    conflicts: Counter[str] = Counter()
    latency: dict[str, list[float]] = {}
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read() if end is None else log.read(max(0, end - offset))
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line still being written
        ref = entry.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}"
                                               if ref.get("subresource") else "")
        key = f"{agent_of(entry)} {entry.get('verb')} {resource}"
        counts[key] += 1
        status = entry.get("responseStatus") or {}
        if status.get("code") == 409 and status.get("reason") == "Conflict":
            conflicts[key] += 1
        with contextlib.suppress(KeyError, ValueError):
            took = (parse_stamp(entry["stageTimestamp"])
                    - parse_stamp(entry["requestReceivedTimestamp"]))
            latency.setdefault(f"{entry.get('verb')} {resource}", []).append(took)
    return {"counts": dict(sorted(counts.items())), "conflicts": dict(sorted(conflicts.items())),
            "server_ms": {k: round(statistics.median(v) * 1e3, 2)
                          for k, v in sorted(latency.items())}}


def parse_stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Window:
    """Where the logs and CPU counters stood when a measured window began."""

    audit_offset: int
    log_offset: int
    hooks_log_offset: int
    began: float
    cpu: dict[str, float]
    reads: dict[str, float]


class Meter:
    """Reads the cost of a window of load on one running loop, for one namespace."""

    def __init__(self, stack: MetacontrollerStack, namespace: str) -> None:
        self.stack = stack
        self.namespace = namespace

    def window(self) -> Window:
        assert self.stack.plane.audit_log is not None
        return Window(audit_offset=self._size(self.stack.plane.audit_log),
                      log_offset=self._size(self.stack.workdir / "metacontroller.log"),
                      hooks_log_offset=self._size(self.stack.workdir / "hooks.log"),
                      began=time.monotonic(), cpu=loop_probes.cpu(self.stack),
                      reads=loop_probes.reads(self.stack))

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def cost(self, since: Window, claims: int) -> dict[str, Any]:
        """Writes since the window began, per claim; conflicts; Metacontroller's retries; CPU
        seconds per claim of each process."""
        assert self.stack.plane.audit_log is not None
        used = loop_probes.cpu(self.stack)
        elapsed = time.monotonic() - since.began
        cpu_ms = {k: round((used[k] - since.cpu.get(k, 0.0)) * 1e3 / max(1, claims), 1)
                  for k in used}
        time.sleep(1.0)  # let the audit log's last lines land
        writes = audit_writes(self.stack.plane.audit_log, since.audit_offset,
                              self.namespace)
        by_agent: Counter[str] = Counter()
        for key, n in writes["counts"].items():
            by_agent[key.split(" ", 1)[0]] += n
        with (self.stack.workdir / "metacontroller.log").open("rb") as log:
            log.seek(since.log_offset)
            text = log.read().decode(errors="replace")
        outdated = text.count("outdated resourceVersion")
        hooks: Counter[str] = Counter()
        with (self.stack.workdir / "hooks.log").open("rb") as log:
            log.seek(since.hooks_log_offset)
            for line in log.read().decode(errors="replace").splitlines():
                if '"POST /' in line:
                    hooks[line.split('"POST ', 1)[1].split(" ", 1)[0]] += 1
        now = loop_probes.reads(self.stack)
        reads = {k: n - since.reads.get(k, 0.0) for k, n in now.items()
                 if n - since.reads.get(k, 0.0) > 0}
        per_claim = {agent: round(n / max(1, claims), 2) for agent, n in sorted(by_agent.items())}
        return {"claims": claims, "writes": writes["counts"], "conflicts": writes["conflicts"],
                "server_ms": writes["server_ms"],
                "writes_per_claim": per_claim,
                "controller_writes_per_claim": per_claim.get("metacontroller", 0.0),
                "conflicts_total": sum(writes["conflicts"].values()),
                "cpu_ms_per_claim": cpu_ms, "elapsed_s": round(elapsed, 2),
                "hook_calls_per_claim": {k: round(n / max(1, claims), 2)
                                         for k, n in sorted(hooks.items())},
                "reads_per_claim": {k: round(n / max(1, claims), 2)
                                    for k, n in sorted(reads.items())},
                "outdated_resource_version_logs": outdated}

    def hook_times(self, since: Window, path_part: str) -> list[float]:
        """Milliseconds the hooks took for requests whose path contains `path_part`, from the
        access log (gunicorn_conf: `... %(M)sms`, inside the JSON log line's message)."""
        out = []
        with (self.stack.workdir / "hooks.log").open("rb") as log:
            log.seek(since.hooks_log_offset)
            for line in log.read().decode(errors="replace").splitlines():
                if path_part in line and (took := ACCESS_MS.search(line)):
                    out.append(float(took.group(1)))
        return out
