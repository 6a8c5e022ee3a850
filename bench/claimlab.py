"""The claim benchmark's laboratory: one running loop and the load it is put under. Used by
bench/bench_claims.py (the figures), bench/ab_claims.py (before/after runs) and
bench/etcd_watch_wait.py.

A `Lab` is the whole loop on loopback (testbed/metacontroller.py: kube-apiserver with an
audit log of writes, etcd, our hooks under gunicorn, the real Metacontroller), the kubelet
stand-in in instant mode, and the tenancy recorder (testbed/tenancy.py) watching
the benchmark's namespace from one list on. It makes pools, claims and Sandboxes (a burst, or an
open-loop steady rate) and waits for them. What the figures say is read elsewhere:

- **Milestones** of every claim, from the recorder's watch events: `lab.milestones`
  (bench/claim_milestones.py).
- **Cost** of a window of load (writes by client from the audit log, conflicts, reads, hook
  calls, CPU per process): `lab.meter` (bench/claim_cost.py); CPU and RSS probes of the loop's
  processes in bench/loop_probes.py.
- **Correctness under load**: `lab.violations()`, testbed/tenancy_rules.py's check over every
  recorded event (no pod serves two Sandbox uids, no Sandbox changes pod, ...).

It must not: assert anything about speed (it measures), or leave a process running.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.claim_cost import KUBELET_AGENT, Meter
from bench.claim_milestones import Claim, Milestones
from sandbox_common.contract import (
    CLAIM_KIND,
    CLAIMS,
    EXTENSIONS_API,
    EXTENSIONS_GROUP,
    POOL_KIND,
    POOLS,
    SANDBOX_API,
    SANDBOX_KIND,
    SANDBOXES,
    TEMPLATE_KIND,
    TEMPLATES,
    VERSION,
)
from sandbox_common.contract import GROUP as SANDBOX_GROUP
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.kubelet import Kubelet
from testbed.metacontroller import (
    METACONTROLLER_FLAGS,
    MetacontrollerStack,
    metacontroller_binary,
    running_stack,
)
from testbed.tenancy import Recorder
from testbed.tenancy_rules import check, is_ready, ready_condition

NS = "bench"
TEMPLATE, POOL = "python-runtime-template", "python-sandbox-warmpool"


def claim_body(name: str, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"sandboxTemplateRef": {"name": TEMPLATE}}
    if pool:
        spec["warmPoolRef"] = {"name": pool}
    return {"apiVersion": EXTENSIONS_API, "kind": CLAIM_KIND,
            "metadata": {"name": name}, "spec": spec}


def binary_or_say_why() -> str | None:
    """The Metacontroller binary a `Lab` runs, or None after saying on stderr why there is
    none (the command-line tools' first step)."""
    binary, why_not = metacontroller_binary()
    if binary is None:
        print(why_not, file=sys.stderr)
    return binary


def sandbox_body(name: str, replicas: int = 1) -> dict[str, Any]:
    """A Sandbox of the seed's pod, made directly (no claim, no pool): its own pod."""
    spec: dict[str, Any] = {"podTemplate": SEED_POD_TEMPLATE}
    if replicas != 1:
        spec["replicas"] = replicas
    return {"apiVersion": SANDBOX_API, "kind": SANDBOX_KIND,
            "metadata": {"name": name}, "spec": spec}



class Lab:
    """One running loop for claims, its namespace, pool(s), kubelet stand-in and recorder."""

    def __init__(self, binary: str, *, metacontroller_flags: tuple[str, ...] = (),
                 hooks_workers: int = 2, hooks_env: dict[str, str] | None = None,
                 overlay: Path | None = None,
                 metacontroller_env: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.metacontroller_env = metacontroller_env or {}
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
            hooks_workers=self.hooks_workers, hooks_env=self.hooks_env,
            metacontroller_env=self.metacontroller_env, **extra))
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
        self.meter = Meter(self.stack, NS)
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
        wanted, done = set(names), set[str]()
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
        wanted, found = set(names), dict[str, float]()
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

    # -- correctness --

    def violations(self) -> tuple[int, str]:
        found = check(self.recorder.snapshot())
        return found.count(), found.summary()

