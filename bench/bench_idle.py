"""Wake on request: a request through the router for a suspended Sandbox, to its answer.

The real loop: kube-apiserver, Metacontroller, our hooks under gunicorn, a real
`sandbox-router` (Kubernetes source) and the kubelet stand-in in its runtime mode (a real
`sandbox-runtime` process per pod, Ready once it answers GET /), so a cold wake includes
starting a runtime. Each sample: a Sandbox with `idleTimeout: 2s` is left alone until it
reports Suspended and its old pod is gone, then one `POST /execute` (`true`) goes through the
router; the time is from sending it to the whole (small) answer, i.e. to its first byte plus a
few hundred bytes. Two paths: a claim whose template has a warm pool with a free Ready pod
(the wake binds it), and a Sandbox with its own pod (the wake starts a new one). Each wake is
taken apart in stages (bench/wake_stages.py: the router's write, Metacontroller and the hook,
the pod's creation, start and readiness, the Sandbox's Ready, the answer); their medians go
into the results' `extra.stages`. `--opt idle.paths=cold` runs one path only.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.harness import Context as BenchContext
from bench.harness import Latencies, Result, Skipped, latency_result
from bench.wake_stages import Watches, describe, milestones, stage_seconds, summary
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.kubelet import Kubelet
from testbed.metacontroller import metacontroller_binary, running_stack
from testbed.support import free_port, script, serve

NS = "bench-idle"
X = "extensions.agents.x-k8s.io/v1alpha1"
TEMPLATE, POOL = "python-runtime-template", "python-sandbox-warmpool"
IDLE = "2s"


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def wait(check: Any, timeout: float = 60.0, show: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    seen = f"; last seen: {show()}" if show else ""
    raise TimeoutError(f"not reached in {timeout:.0f}s{seen}")


def run(ctx: BenchContext) -> list[Result]:
    binary, why_not = metacontroller_binary()
    if binary is None:
        raise Skipped(f"{why_not}; the wake benchmark needs the real loop")
    samples, rounds = ctx.scale(8, 3), ctx.scale(2, 1)
    paths = set(ctx.option("idle.paths", "warm,cold").split(","))
    pod_template = {**SEED_POD_TEMPLATE, "spec": {**SEED_POD_TEMPLATE["spec"],
                                                  "terminationGracePeriodSeconds": 1}}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, \
            running_stack(Path(tmp), binary) as stack:
        stack.kubectl("create", "namespace", NS)
        stack.kubectl("wait", "--for=create", "--timeout=30s", "serviceaccount/default", "-n", NS)
        api = stack.plane.api_client()
        kubelet = Kubelet(api, NS, state_dir=Path(tmp) / "kubelet")
        kubelet.start()
        watches = Watches(api, NS)
        watches.start()
        token = secrets.token_urlsafe(24)
        (Path(tmp) / "token").write_text(token)
        port = free_port()
        argv = [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(port),
                "--source", "kubernetes", "--namespace", NS, "--allow-loopback-pods",
                "--token-file", str(Path(tmp) / "token"), "--no-access-log"]
        session = requests.Session()

        def get(kind: str, name: str) -> dict[str, Any] | None:
            return stack.get(kind, name, NS)

        def asleep(name: str) -> bool:
            box = get("sandbox", name)
            if condition(box, "Suspended").get("status") != "True":
                return False
            # Its old pod is gone (a pool's pod, or its own of the same name).
            uid = box["metadata"]["uid"]  # type: ignore[index]
            return not [p for p in stack.list("pod", NS)
                        if (p["metadata"].get("labels") or {}).get(
                            "agents.x-k8s.io/sandbox-uid") == uid]

        stages: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}

        def wake(name: str, path: str) -> float:
            uid = (get("sandbox", name) or {})["metadata"]["uid"]
            start = time.perf_counter()
            answer = session.post(f"http://127.0.0.1:{port}/execute", json={"command": "true"},
                                  headers={"X-Sandbox-ID": name, "X-Sandbox-Namespace": NS,
                                           "Authorization": f"Bearer {token}"}, timeout=60)
            end = time.perf_counter()
            if answer.status_code != 200:
                raise RuntimeError(f"wake of {name}: {answer.status_code} {answer.text}")
            time.sleep(0.2)  # the watches' last events of this wake
            stages[path].append(stage_seconds(milestones(watches, uid, start, end)))
            return end - start

        def pool_ready() -> bool:
            status = (get("sandboxwarmpool", POOL) or {}).get("status") or {}
            return status.get("readyReplicas") == 2

        try:
            with serve(argv, port, env={"KUBECONFIG": str(stack.plane.kubeconfig)}):
                stack.apply({"apiVersion": X, "kind": "SandboxTemplate",
                             "metadata": {"name": TEMPLATE},
                             "spec": {"podTemplate": pod_template, "idleTimeout": IDLE}}, NS)
                stack.apply({"apiVersion": X, "kind": "SandboxWarmPool",
                             "metadata": {"name": POOL},
                             "spec": {"replicas": 2, "sandboxTemplateRef": {"name": TEMPLATE}}},
                            NS)
                if "warm" in paths:
                    wait(pool_ready, 120)
                stack.apply({"apiVersion": X, "kind": "SandboxClaim", "metadata": {"name": "w"},
                             "spec": {"sandboxTemplateRef": {"name": TEMPLATE}}}, NS)
                stack.apply({"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox",
                             "metadata": {"name": "c"},
                             "spec": {"podTemplate": pod_template, "idleTimeout": IDLE}}, NS)
                warm, cold, warm_served = Latencies(), Latencies(), 0
                for _ in range(rounds):
                    warm_round, cold_round = [], []
                    for _ in range(samples):
                        if "warm" in paths:
                            wait(lambda: asleep("w") and pool_ready(), 120)
                            warm_round.append(wake("w", "warm"))
                            served = (get("sandbox", "w") or {}).get("status", {}).get(
                                "podName", "")
                            warm_served += served.startswith(POOL)
                        if "cold" in paths:
                            wait(lambda: asleep("c"), 120,
                                 lambda: (get("sandbox", "c"), stack.list("pod", NS)))
                            cold_round.append(wake("c", "cold"))
                    if warm_round:
                        warm.add_round(warm_round)
                    if cold_round:
                        cold.add_round(cold_round)
        finally:
            session.close()
            watches.stop()
            kubelet.stop()
            api.close()
    warm_stages, cold_stages = summary(stages["warm"]), summary(stages["cold"])
    results = []
    if warm.rounds:
        warm_p50 = warm.median("p50") * 1e3
        results.append(latency_result(
            "idle", "wake on request -> answer, warm pool available", warm,
            goal="p50 <= 500 ms", met=warm_p50 <= 500,
            floor_name="wake on request, own (cold) pod" if cold.rounds else "",
            ratio_to_floor=warm.median("p50") / cold.median("p50") if cold.rounds else None,
            notes=f"{warm_served}/{warm.samples} wakes served by a warm pod; a real runtime "
                  f"per pod (kubelet stand-in); stage medians: {describe(warm_stages)}",
            extra={"stages": warm_stages}))
    if cold.rounds:
        cold_p50 = cold.median("p50") * 1e3
        results.append(latency_result(
            "idle", "wake on request -> answer, own (cold) pod", cold,
            goal="p50 <= 1 s", met=cold_p50 <= 1000,
            notes="the wake starts a new sandbox-runtime process and waits for it to answer; "
                  f"stage medians: {describe(cold_stages)}",
            extra={"stages": cold_stages}))
    return results
