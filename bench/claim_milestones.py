"""Each claim's milestones in the claim benchmark, read from the tenancy recorder's watch events.
Used by bench/claimlab.py (a `Lab` keeps one `Milestones`) and, through `lab.milestones`, by
bench/bench_claims.py, bench/ab_claims.py and bench/etcd_watch_wait.py (wait, report).

The milestones of a claim, on this process's clock: created (just before the create call), its
Sandbox created, a pod bound to the Sandbox's uid, that pod Ready, the Sandbox naming it in
`status.podName`, the claim Ready, the Sandbox Ready. They come from the recorder's long-lived
watch per kind (testbed/tenancy.py), never a watch per claim: on kube-apiserver 1.34 with etcd
3.6 a watch opened without a resourceVersion is a consistent read from the watch cache, which
waits up to 100 ms for a progress notification (docs/benchmarks.md).

It must not: open watches or call the API server itself (the recorder does), or assert anything
about speed (it measures).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox_common.contract import CLAIM_KIND, SANDBOX_KIND, SANDBOX_UID_LABEL, TERMINAL_REASONS
from testbed.tenancy import Recorder
from testbed.tenancy_rules import Event, is_ready, ready_condition

# The milestones of a claim, in the order they happen, and the stages between them.
MILESTONES = ("created", "sandbox", "bound", "pod_ready", "named", "claim_ready",
              "sandbox_ready")
STAGES = {
    "sandbox": "claim created -> Sandbox created",
    "bound": "Sandbox -> pod bound to its uid",
    "pod_ready": "pod bound -> pod Ready",
    "named": "pod Ready -> Sandbox names it",
    "claim_ready": "Sandbox names pod -> claim Ready",
    "sandbox_ready": "claim Ready -> Sandbox Ready",
}



@dataclass
class Claim:
    """One claim's milestones (time.monotonic() seconds; None until seen)."""

    name: str
    created: float
    uid: str = ""
    sandbox_uid: str = ""
    pod: str = ""
    times: dict[str, float] = field(default_factory=dict)
    failed: str = ""  # a terminal reason, if the claim reported one

    def milestone(self, key: str) -> float | None:
        return self.created if key == "created" else self.times.get(key)

    def stages(self) -> dict[str, float] | None:
        """Seconds spent in each stage (a milestone seen out of order counts as no time), or
        None while the claim is not Ready."""
        if "claim_ready" not in self.times:
            return None
        out, previous = {}, self.created
        for key in MILESTONES[1:]:
            moment = self.times.get(key, previous)
            if key == "sandbox_ready" and moment < self.times["claim_ready"]:
                moment = self.times["claim_ready"]  # Ready together: no time after the claim
            out[key] = max(0.0, moment - previous)
            previous = max(previous, moment)
        return out

    @property
    def latency(self) -> float | None:
        ready = self.times.get("claim_ready")
        return None if ready is None else ready - self.created


class Milestones:
    """Reads the recorder's events as they come and keeps each claim's milestones."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.cursor = 0
        self.claims: dict[str, Claim] = {}  # by name (the benchmark never reuses one)
        self.by_sandbox: dict[str, Claim] = {}  # Sandbox uid -> its claim
        self.pod_seen: dict[str, tuple[float, str]] = {}  # Sandbox uid -> (bound at, pod)
        self.pod_ready: dict[str, float] = {}  # Sandbox uid -> its bound pod Ready at
        self.lock = threading.Lock()

    def expect(self, name: str, created: float) -> Claim:
        with self.lock:
            claim = self.claims[name] = Claim(name, created)
            return claim

    def update(self) -> None:
        with self.recorder.lock:
            fresh = self.recorder.events[self.cursor:]
            self.cursor += len(fresh)
        with self.lock:
            for event in fresh:
                self._consume(event)

    def _first(self, claim: Claim, key: str, moment: float) -> None:
        claim.times.setdefault(key, moment)

    def _consume(self, event: Event) -> None:
        obj, meta, seen = event.obj, event.obj["metadata"], event.seen
        if event.type == "DELETED":
            return
        if event.kind == CLAIM_KIND:
            claim = self.claims.get(meta["name"])
            if claim is None:
                return
            claim.uid = claim.uid or meta["uid"]
            if is_ready(obj):
                self._first(claim, "claim_ready", seen)
            elif ready_condition(obj).get("reason") in TERMINAL_REASONS:
                claim.failed = str(ready_condition(obj)["reason"])
        elif event.kind == SANDBOX_KIND:
            owner = next((r for r in meta.get("ownerReferences") or []
                          if r.get("kind") == CLAIM_KIND and r.get("controller")), None)
            claim = self.claims.get(owner["name"]) if owner else None
            if claim is None:
                return
            claim.sandbox_uid = meta["uid"]
            self.by_sandbox[meta["uid"]] = claim
            self._first(claim, "sandbox", seen)
            if meta["uid"] in self.pod_seen:
                self._first(claim, "bound", self.pod_seen[meta["uid"]][0])
            if meta["uid"] in self.pod_ready:
                self._first(claim, "pod_ready", self.pod_ready[meta["uid"]])
            status = obj.get("status") or {}
            if status.get("podName"):
                claim.pod = claim.pod or status["podName"]
                self._first(claim, "named", seen)
            if is_ready(obj):
                self._first(claim, "sandbox_ready", seen)
        elif event.kind == "Pod":
            uid = (meta.get("labels") or {}).get(SANDBOX_UID_LABEL)
            if not uid or meta.get("deletionTimestamp"):
                return
            self.pod_seen.setdefault(uid, (seen, meta["name"]))
            if is_ready(obj):
                self.pod_ready.setdefault(uid, seen)
            claim = self.by_sandbox.get(uid)
            if claim is not None:
                self._first(claim, "bound", self.pod_seen[uid][0])
                if uid in self.pod_ready:
                    self._first(claim, "pod_ready", self.pod_ready[uid])

    def wait(self, names: list[str], timeout: float) -> list[str]:
        """Wait until every named claim and its Sandbox are Ready (or the claim failed); return
        the claims that are not Ready."""
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            with self.lock:
                left = [n for n in names if not {"claim_ready", "sandbox_ready"}
                        <= self.claims[n].times.keys() and not self.claims[n].failed]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.01)

    def report(self, names: list[str]) -> dict[str, Any]:
        """Latencies, stage durations (each claim's, for the plots) and failures."""
        self.update()
        with self.lock:
            claims = [self.claims[n] for n in names]
        ready = [c for c in claims if c.latency is not None]
        start = min((c.created for c in claims), default=0.0)
        rows = []
        for c in sorted(ready, key=lambda c: c.created):
            stages = c.stages() or {}
            rows.append([round((c.created - start) * 1e3, 1)]
                        + [round(stages[k] * 1e3, 1) for k in STAGES])
        stage_means = {STAGES[k]: statistics.fmean(r[i + 1] for r in rows) if rows else 0.0
                       for i, k in enumerate(STAGES)}
        warm = sum(1 for c in ready if c.pod and c.pod != c.name)
        return {
            "latencies": [c.latency for c in ready],
            "last_ready_s": max((c.times["claim_ready"] for c in ready), default=start) - start,
            # The Sandbox's own Ready (what a client that watches the Sandbox waits for) may
            # come a sync after its claim's.
            "last_sandbox_ready_s": max((c.times.get("sandbox_ready", c.times["claim_ready"])
                                         for c in ready), default=start) - start,
            "failed": {c.name: c.failed or "not Ready" for c in claims if c.latency is None},
            "warm_served": warm,
            "stages": {"names": list(STAGES.values()), "rows": rows},
            "stage_means_ms": stage_means,
        }
