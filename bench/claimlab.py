"""The claim benchmark's laboratory: one running loop, the load it is put under, and what it
cost. Used by bench/bench_claims.py (the figures) and bench/ab_claims.py (before/after runs).

A `Lab` is the whole loop on loopback (testbed/metacontroller.py: kube-apiserver with an
audit log of writes, etcd, our hooks under gunicorn, the real Metacontroller), the kubelet
stand-in in instant mode, and the tenancy recorder (testbed/tenancy.py) watching
the benchmark's namespace from one list on. Everything the figures say comes from there:

- **Milestones** of every claim, from the recorder's watch events, on this process's clock:
  created (just before the create call), its Sandbox created, a pod bound to the Sandbox's uid,
  that pod Ready, the Sandbox naming it in `status.podName`, the claim Ready, the Sandbox
  Ready. One long-lived watch per kind, never a watch per claim: on kube-apiserver 1.34 with
  etcd 3.6 a watch opened without a resourceVersion is a consistent read from the watch cache,
  which waits up to 100 ms for a progress notification (docs/benchmarks.md).
- **Cost**: every write of the window by client (Metacontroller, the kubelet stand-in, the
  benchmark, kube-controller-manager), verb and resource, from the API server's audit log; the
  409 Conflicts among them; Metacontroller's "outdated resourceVersion" log lines.
- **Correctness under load**: testbed/tenancy_rules.py's check over every recorded event (no
  pod serves two Sandbox uids, no Sandbox changes pod, ...), and claims that never got Ready.

It must not: assert anything about speed (it measures), or leave a process running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.harness import rss_mib, tree_pids
from sandbox_common.contract import (
    CLAIM_KIND,
    CLAIMS,
    EXTENSIONS_API,
    EXTENSIONS_GROUP,
    POOL_KIND,
    POOLS,
    SANDBOX_API,
    SANDBOX_KIND,
    SANDBOX_UID_LABEL,
    SANDBOXES,
    TEMPLATE_KIND,
    TEMPLATES,
    TERMINAL_REASONS,
    VERSION,
)
from sandbox_common.contract import GROUP as SANDBOX_GROUP
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.kubelet import Kubelet
from testbed.metacontroller import METACONTROLLER_FLAGS, MetacontrollerStack, running_stack
from testbed.tenancy import Recorder
from testbed.tenancy_rules import Event, check, is_ready, ready_condition

NS = "bench"
TEMPLATE, POOL = "python-runtime-template", "python-sandbox-warmpool"
KUBELET_AGENT = "kubelet-stand-in"

ACCESS_MS = re.compile(r" (\d+)ms\"?\}?$")  # the access log's last field, whole milliseconds

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


def claim_body(name: str, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"sandboxTemplateRef": {"name": TEMPLATE}}
    if pool:
        spec["warmPoolRef"] = {"name": pool}
    return {"apiVersion": EXTENSIONS_API, "kind": CLAIM_KIND,
            "metadata": {"name": name}, "spec": spec}


def sandbox_body(name: str, replicas: int = 1) -> dict[str, Any]:
    """A Sandbox of the seed's pod, made directly (no claim, no pool): its own pod."""
    spec: dict[str, Any] = {"podTemplate": SEED_POD_TEMPLATE}
    if replicas != 1:
        spec["replicas"] = replicas
    return {"apiVersion": SANDBOX_API, "kind": SANDBOX_KIND,
            "metadata": {"name": name}, "spec": spec}


def percentiles(values: list[float]) -> dict[str, float]:
    from bench.harness import percentile

    ordered = sorted(values)
    if not ordered:
        return {}
    return {q: percentile(ordered, float(q[1:])) for q in ("p50", "p95", "p99")} | {
        "max": ordered[-1], "mean": statistics.fmean(ordered)}


# ---- milestones ---------------------------------------------------------------------------


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
        """Wait until every named claim is Ready (or failed); return those that are not."""
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            with self.lock:
                left = [n for n in names if "claim_ready" not in self.claims[n].times
                        and not self.claims[n].failed]
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
            "failed": {c.name: c.failed or "not Ready" for c in claims if c.latency is None},
            "warm_served": warm,
            "stages": {"names": list(STAGES.values()), "rows": rows},
            "stage_means_ms": stage_means,
        }


# ---- cost: the audit log, Metacontroller's log --------------------------------------------


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


def audit_writes(path: Path, offset: int, end: int | None = None,
                 namespace: str = NS) -> dict[str, Any]:
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


# ---- the laboratory -----------------------------------------------------------------------


class Lab:
    """One running loop for claims, its namespace, pool(s), kubelet stand-in and recorder."""

    def __init__(self, binary: str, *, metacontroller_flags: tuple[str, ...] = (),
                 hooks_workers: int = 2, hooks_env: dict[str, str] | None = None,
                 overlay: Path | None = None) -> None:
        self.binary = binary
        self.flags = METACONTROLLER_FLAGS + tuple(metacontroller_flags)
        self.hooks_workers = hooks_workers
        self.hooks_env = hooks_env or {}
        self.overlay = overlay
        self.exits = contextlib.ExitStack()
        self.stack: MetacontrollerStack
        self.counter = 0

    # -- start and stop --

    def __enter__(self) -> Lab:
        try:
            self._start()
        except BaseException:
            self.exits.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.exits.close()

    def _start(self) -> None:
        from kubernetes import client

        tmp = Path(self.exits.enter_context(tempfile.TemporaryDirectory(prefix="bench-claims-")))
        extra: dict[str, Any] = {"overlay": self.overlay} if self.overlay else {}
        self.stack = self.exits.enter_context(running_stack(
            tmp, self.binary, audit=True, metacontroller_flags=self.flags,
            hooks_workers=self.hooks_workers, hooks_env=self.hooks_env, **extra))
        self.stack.kubectl("create", "namespace", NS)
        self.stack.kubectl("wait", "--for=create", "--timeout=30s", "serviceaccount/default",
                           "-n", NS)
        self.api = self.stack.plane.api_client()
        self.exits.callback(self.api.close)
        # Enough connections for the load threads; the kubelet stand-in has a client of its own.
        self.api.configuration.connection_pool_maxsize = 32
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        kubelet_api = self.stack.plane.api_client()
        kubelet_api.user_agent = KUBELET_AGENT
        self.exits.callback(kubelet_api.close)
        self.kubelet = Kubelet(kubelet_api, NS, mode="instant")
        self.kubelet.start()
        self.exits.callback(self.kubelet.stop)
        recorder_api = self.stack.plane.api_client()
        self.exits.callback(recorder_api.close)
        self.recorder = Recorder(recorder_api, NS, slim=True)
        self.recorder.start()
        self.exits.callback(self.recorder.stop)
        self.milestones = Milestones(self.recorder)
        self.custom.create_namespaced_custom_object(EXTENSIONS_GROUP, VERSION, NS, TEMPLATES, {
            "apiVersion": EXTENSIONS_API, "kind": TEMPLATE_KIND,
            "metadata": {"name": TEMPLATE}, "spec": {"podTemplate": SEED_POD_TEMPLATE}})

    # -- pools --

    def make_pools(self, count: int, replicas: int) -> list[str]:
        """`count` pools of the template (POOL-0, ...), all full, and listed by the template
        (claims pick among the pools it lists)."""
        names = [f"{POOL}-{i}" for i in range(count)]
        for name in names:
            self.custom.create_namespaced_custom_object(EXTENSIONS_GROUP, VERSION, NS, POOLS, {
                "apiVersion": EXTENSIONS_API, "kind": POOL_KIND,
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": TEMPLATE}}})
        for name in names:
            self.pool_full(replicas, name, timeout=600)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            template = self.custom.get_namespaced_custom_object(EXTENSIONS_GROUP, VERSION, NS,
                                                                TEMPLATES, TEMPLATE)
            if sorted((template.get("status") or {}).get("warmPools") or []) == sorted(names):
                return names
            time.sleep(0.1)
        raise TimeoutError(f"template {TEMPLATE} does not list the pools {names}")

    def pool_full(self, replicas: int, name: str = POOL, timeout: float = 300.0) -> float:
        """Wait until the pool reports `replicas` free Ready pods; seconds waited."""
        began = time.monotonic()
        while True:
            status = self.custom.get_namespaced_custom_object(
                EXTENSIONS_GROUP, VERSION, NS, POOLS, name).get("status") or {}
            if status.get("readyReplicas") == replicas and status.get("replicas") == replicas:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"pool {name} not full ({replicas}) after {timeout:.0f}s: "
                                   f"{status}")
            time.sleep(0.05)

    # -- load --

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def create_claim(self, name: str, pool: str | None = None) -> Claim:
        started = time.monotonic()
        claim = self.milestones.expect(name, started)
        self.custom.create_namespaced_custom_object(EXTENSIONS_GROUP, VERSION, NS, CLAIMS,
                                                    claim_body(name, pool))
        return claim

    def delete_claims(self, names: list[str]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: self.custom.delete_namespaced_custom_object(
                EXTENSIONS_GROUP, VERSION, NS, CLAIMS, n), names))

    def burst(self, names: list[str], threads: int = 16, pool: str | None = None) -> float:
        """Create every claim as fast as `threads` clients can; seconds the creates took."""
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(lambda n: self.create_claim(n, pool), names))
        return time.monotonic() - began

    def steady(self, prefix: str, rate: float, seconds: float, threads: int = 16,
               pools: list[str] | None = None) -> tuple[list[str], float]:
        """Open-loop load: a claim every 1/rate s for `seconds`, whatever the answers take.
        Returns the names and the largest lag behind schedule (s)."""
        count = int(rate * seconds)
        names = [self.name(prefix) for _ in range(count)]
        began = time.monotonic() + 0.05
        lag = [0.0]
        lock = threading.Lock()

        def one(index: int) -> None:
            due = began + index / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with lock:
                lag[0] = max(lag[0], time.monotonic() - due)
            chosen = pools[index % len(pools)] if pools else None
            self.create_claim(names[index], chosen)

        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(one, range(count)))
        return names, lag[0]

    def create_sandboxes(self, names: list[str], replicas: int = 1, threads: int = 16) -> None:
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(lambda n: self.custom.create_namespaced_custom_object(
                SANDBOX_GROUP, VERSION, NS, SANDBOXES, sandbox_body(n, replicas)), names))

    def wait_sandboxes_settled(self, names: list[str], timeout: float) -> None:
        """Wait until each named Sandbox has a status with a Ready condition (any reason)."""
        wanted, done = set(names), set()
        deadline = time.monotonic() + timeout
        cursor = 0
        while wanted - done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted - done)} Sandboxes without a status after "
                                   f"{timeout:.0f} s")
            with self.recorder.lock:
                fresh = self.recorder.events[cursor:]
                cursor += len(fresh)
            done.update(e.obj["metadata"]["name"] for e in fresh
                        if e.kind == SANDBOX_KIND and e.type != "DELETED"
                        and ready_condition(e.obj))
            time.sleep(0.05)

    def wait_sandboxes_ready(self, names: list[str], timeout: float) -> dict[str, float]:
        """Seconds from now until each named Sandbox was first Ready, from the recorder."""
        wanted, found = set(names), {}
        deadline = time.monotonic() + timeout
        cursor = 0
        while wanted - found.keys() and time.monotonic() < deadline:
            with self.recorder.lock:
                fresh = self.recorder.events[cursor:]
                cursor += len(fresh)
            for event in fresh:
                meta = event.obj["metadata"]
                if (event.kind == SANDBOX_KIND and meta["name"] in wanted
                        and event.type != "DELETED" and is_ready(event.obj)):
                    found.setdefault(meta["name"], event.seen)
            time.sleep(0.01)
        return found

    # -- cost and state --

    def window(self) -> Window:
        assert self.stack.plane.audit_log is not None
        return Window(audit_offset=self._size(self.stack.plane.audit_log),
                      log_offset=self._size(self.stack.workdir / "metacontroller.log"),
                      hooks_log_offset=self._size(self.stack.workdir / "hooks.log"),
                      began=time.monotonic(), cpu=self.cpu(), reads=self.reads())

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def cost(self, since: Window, claims: int) -> dict[str, Any]:
        """Writes since the window began, per claim; conflicts; Metacontroller's retries; CPU
        seconds per claim of each process."""
        assert self.stack.plane.audit_log is not None
        used = self.cpu()
        elapsed = time.monotonic() - since.began
        cpu_ms = {k: round((used[k] - since.cpu.get(k, 0.0)) * 1e3 / max(1, claims), 1)
                  for k in used}
        time.sleep(1.0)  # let the audit log's last lines land
        writes = audit_writes(self.stack.plane.audit_log, since.audit_offset)
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
        reads = {k: n - since.reads.get(k, 0.0) for k, n in self.reads().items()
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

    def violations(self) -> tuple[int, str]:
        found = check(self.recorder.snapshot())
        return found.count(), found.summary()

    def rss(self) -> dict[str, float]:
        """Resident MiB of the hooks server (master and workers) and of Metacontroller."""
        out = {}
        for name in ("hooks", "metacontroller"):
            process = self.stack.processes.get(name)
            if process is not None and process.poll() is None:
                total = 0.0
                for pid in tree_pids(process.pid):
                    with contextlib.suppress(OSError, RuntimeError):
                        total += rss_mib(pid)
                out[name] = round(total, 1)
        return out

    def reads(self) -> dict[str, float]:
        """The API server's count of read requests so far, by "verb resource" (its /metrics,
        apiserver_request_total): GETs, LISTs and WATCHes, which the audit log leaves out."""
        totals: Counter[str] = Counter()
        for line in self.stack.plane.get("/metrics").text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(part.split("=", 1) for part in
                          line[line.index("{") + 1:line.index("}")].replace('"', "").split(","))
            if labels.get("verb") in ("GET", "LIST", "WATCH"):
                resource = labels.get("resource", "") + (
                    f"/{labels['subresource']}" if labels.get("subresource") else "")
                totals[f"{labels['verb']} {resource}"] += float(line.rsplit(" ", 1)[1])
        return dict(totals)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each part of the loop has used so far, this process (the
        benchmark's client, recorder and kubelet stand-in) included."""
        ticks = os.sysconf("SC_CLK_TCK")
        parts = {**self.stack.plane.processes, **self.stack.processes}
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

    def metacontroller_metric(self, name: str) -> dict[str, float]:
        """Samples of one Metacontroller metric, by label set."""
        text = requests.get(self.stack.metrics_url, timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith(name):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out
