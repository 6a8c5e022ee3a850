"""A re-created claim never inherits the previous tenant's pod: 100 delete/re-create trials on
the real loop (kube-apiserver, Metacontroller, our hooks under gunicorn).

Four claims, each deleted and created again under the same name after 0, 50, 200 or 1000 ms,
25 trials per delay, against the seed's warm pool. A kubelet stand-in binds every pod to a node
(so deletions are graceful and pods linger, terminating, as on a cluster) and gives each pod
an IP of its own. Every Pod, Service, Sandbox and SandboxClaim event of the namespace is
recorded; testbed/tenancy_rules.py replays them in resourceVersion order and checks,
per Sandbox uid: no pod serves two uids (not even two Sandboxes of the same name), no
Service reaches another uid's pod, no Sandbox changes pod or reports Ready on a pod that is
gone or terminating, a claim's Sandbox is Ready only with the pod-name annotation naming its
pod, and a pod bound to a uid that is gone is deleted, not kept. Figures (claim -> Ready per
delay, fresh claims for comparison) are printed; run with -s to see them.

Skipped (reason printed) unless METACONTROLLER_BIN names a Metacontroller binary.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pytest

from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.tenancy import GracefulKubelet, Recorder, recorded
from testbed.tenancy_rules import check, controller_uid, is_ready, leftover_bound_pods

GROUP, VERSION = "extensions.agents.x-k8s.io", "v1alpha1"
TEMPLATE, POOL = "python-runtime-template", "python-sandbox-warmpool"
DELAYS = (0.0, 0.05, 0.2, 1.0)
TRIALS_PER_DELAY = 25
TENANTS = 4
POOL_REPLICAS = 3
READY_TIMEOUT = 60.0


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SandboxClaim",
            "metadata": {"name": name}, "spec": {"sandboxTemplateRef": {"name": TEMPLATE}}}


class Claims:
    """Create, delete and time claims of one namespace; Ready is read from the recorder."""

    def __init__(self, api_client: Any, namespace: str, recorder: Recorder) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.namespace, self.recorder = namespace, recorder

    def create(self, name: str) -> tuple[str, float]:
        from kubernetes.client.exceptions import ApiException

        for _ in range(100):
            started = time.monotonic()
            try:
                made = self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "sandboxclaims", claim(name))
                return made["metadata"]["uid"], started
            except ApiException as exc:
                if exc.status != 409:  # the previous claim of that name is still going
                    raise
                time.sleep(0.01)
        raise AssertionError(f"claim {name} could not be created again")

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                    "sandboxclaims", name)

    def ready_after(self, uid: str, started: float) -> float | None:
        """Seconds from `started` to the claim's first Ready event, or None on timeout."""
        event = self.recorder.wait_for(
            lambda e: e.kind == "SandboxClaim" and e.type != "DELETED"
            and e.obj["metadata"]["uid"] == uid and is_ready(e.obj), READY_TIMEOUT)
        return None if event is None else event.seen - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ms = [s * 1e3 for s in samples]
    return (f"n={len(ms)} p50={statistics.median(ms):.0f} ms p90={percentile(ms, 0.9):.0f} ms "
            f"max={max(ms):.0f} ms")


@pytest.mark.timeout(900)
def test_recreated_claims_never_inherit_a_pod_or_switch_pods(metacontroller_stack, namespace):
    stack = metacontroller_stack
    api = stack.plane.api_client()
    kubelet = GracefulKubelet(api, namespace, grace=0.5)
    kubelet.start()
    latencies: dict[float, list[float]] = {d: [] for d in DELAYS}
    timeouts: list[str] = []
    fresh: list[float] = []
    delay_of: dict[str, float] = {}  # claim uid -> the delay of its trial
    try:
        with recorded(api, namespace) as recorder:
            claims = Claims(api, namespace, recorder)
            stack.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": "SandboxTemplate",
                         "metadata": {"name": TEMPLATE},
                         "spec": {"podTemplate": SEED_POD_TEMPLATE}}, namespace)
            stack.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": "SandboxWarmPool",
                         "metadata": {"name": POOL},
                         "spec": {"replicas": POOL_REPLICAS,
                                  "sandboxTemplateRef": {"name": TEMPLATE}}}, namespace)

            def pool_ready() -> None:
                stack.wait_for("sandboxwarmpool", POOL,
                               lambda p: (p.get("status") or {}).get("readyReplicas")
                               == POOL_REPLICAS, namespace=namespace, timeout=60)

            pool_ready()
            # For comparison: fresh names, one at a time, each served by a warm pod.
            for i in range(10):
                uid, started = claims.create(f"fresh-{i}")
                took = claims.ready_after(uid, started)
                assert took is not None, f"fresh claim fresh-{i} not Ready"
                fresh.append(took)
                claims.delete(f"fresh-{i}")
                pool_ready()

            def tenant(index: int) -> None:
                name = f"tenant-{index}"
                uid, started = claims.create(name)
                if claims.ready_after(uid, started) is None:
                    timeouts.append(f"{name}: first claim not Ready")
                    return
                for trial in range(TRIALS_PER_DELAY * len(DELAYS) // TENANTS):
                    delay = DELAYS[(trial + index) % len(DELAYS)]
                    claims.delete(name)
                    time.sleep(delay)
                    uid, started = claims.create(name)
                    delay_of[uid] = delay
                    took = claims.ready_after(uid, started)
                    if took is None:
                        timeouts.append(f"{name} trial {trial} (delay {delay}s): not Ready "
                                        f"in {READY_TIMEOUT:.0f}s")
                        return
                    latencies[delay].append(took)

            workers = [threading.Thread(target=tenant, args=(i,)) for i in range(TENANTS)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

            # Settled: every pod still bound serves the live Sandbox it is bound to.
            deadline = time.monotonic() + 30
            while leftover_bound_pods(recorder.snapshot()) and time.monotonic() < deadline:
                time.sleep(0.5)
            leftovers = leftover_bound_pods(recorder.snapshot())
            events = recorder.snapshot()
    finally:
        kubelet.stop()
        api.close()

    findings = check(events)
    done = sum(len(v) for v in latencies.values())
    claim_of = {e.obj["metadata"]["uid"]: controller_uid(e.obj) for e in events
                if e.kind == "Sandbox"}
    spoiled = {rule: {claim_of.get(uid) for uid in uids}
               for rule, uids in findings.involved.items()}
    print(f"\ntenancy trials: {done} trials, {findings.sandboxes} sandbox uids, "
          f"{findings.pods_bound} pods bound, {findings.ready_events} Sandbox Ready events, "
          f"{findings.count()} violations, {len(timeouts)} timeouts, "
          f"{len(leftovers)} bound pods left over")
    print(f"  fresh claim -> Ready (warm): {figures(fresh)}")
    for delay in DELAYS:
        trials = [uid for uid, d in delay_of.items() if d == delay]
        bad = sum(1 for uid in trials if any(uid in claims for claims in spoiled.values()))
        rules = ", ".join(f"{rule} {sum(1 for uid in trials if uid in claims)}"
                          for rule, claims in sorted(spoiled.items()))
        print(f"  re-created after {delay * 1e3:.0f} ms: {len(trials)} trials, {bad} with a "
              f"violation ({rules or 'none'}); claim -> Ready {figures(latencies[delay])}")
    print("  " + findings.summary().replace("\n", "\n  "))
    assert findings.count() == 0, findings.summary()
    assert timeouts == [], timeouts
    assert leftovers == [], leftovers
    assert all(len(latencies[d]) == TRIALS_PER_DELAY for d in DELAYS), {
        d: len(v) for d, v in latencies.items()}
