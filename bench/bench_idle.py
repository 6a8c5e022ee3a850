"""Wake on request: a request through the router for a suspended Sandbox, to its answer.

The real loop: kube-apiserver, Metacontroller, our hooks under gunicorn, a real
`sandbox-router` (Kubernetes source) and the kubelet stand-in in its runtime mode (a real
`sandbox-runtime` process per pod, Ready once it answers GET /), so a cold wake includes
starting a runtime. Each sample: a Sandbox with `idleTimeout: 2s` is left alone until it
reports Suspended and its old pod is gone, then one `POST /execute` (`true`) goes through the
router; the time is from sending it to the whole (small) answer, i.e. to its first byte plus a
few hundred bytes. Two paths: a claim whose template has a warm pool with a free Ready pod
(the wake binds it), and a Sandbox with its own pod (the wake starts a new one).
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


def wait(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"not reached in {timeout:.0f}s")


def run(ctx: BenchContext) -> list[Result]:
    binary, why_not = metacontroller_binary()
    if binary is None:
        raise Skipped(f"{why_not}; the wake benchmark needs the real loop")
    samples, rounds = ctx.scale(8, 3), ctx.scale(2, 1)
    pod_template = {**SEED_POD_TEMPLATE, "spec": {**SEED_POD_TEMPLATE["spec"],
                                                  "terminationGracePeriodSeconds": 1}}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, \
            running_stack(Path(tmp), binary) as stack:
        stack.kubectl("create", "namespace", NS)
        stack.kubectl("wait", "--for=create", "--timeout=30s", "serviceaccount/default", "-n", NS)
        api = stack.plane.api_client()
        kubelet = Kubelet(api, NS, state_dir=Path(tmp) / "kubelet")
        kubelet.start()
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

        def wake(name: str) -> float:
            start = time.perf_counter()
            answer = session.post(f"http://127.0.0.1:{port}/execute", json={"command": "true"},
                                  headers={"X-Sandbox-ID": name, "X-Sandbox-Namespace": NS,
                                           "Authorization": f"Bearer {token}"}, timeout=60)
            took = time.perf_counter() - start
            if answer.status_code != 200:
                raise RuntimeError(f"wake of {name}: {answer.status_code} {answer.text}")
            return took

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
                        wait(lambda: asleep("w") and pool_ready(), 120)
                        warm_round.append(wake("w"))
                        served = (get("sandbox", "w") or {}).get("status", {}).get("podName", "")
                        warm_served += served.startswith(POOL)
                        wait(lambda: asleep("c"), 120)
                        cold_round.append(wake("c"))
                    warm.add_round(warm_round)
                    cold.add_round(cold_round)
        finally:
            session.close()
            kubelet.stop()
            api.close()
    warm_p50, cold_p50 = warm.median("p50") * 1e3, cold.median("p50") * 1e3
    return [
        latency_result(
            "idle", "wake on request -> answer, warm pool available", warm,
            goal="p50 <= 500 ms", met=warm_p50 <= 500,
            floor_name="wake on request, own (cold) pod",
            ratio_to_floor=warm.median("p50") / cold.median("p50"),
            notes=f"{warm_served}/{warm.samples} wakes served by a warm pod; a real runtime "
                  "per pod (kubelet stand-in)"),
        latency_result(
            "idle", "wake on request -> answer, own (cold) pod", cold,
            goal="p50 <= 1 s", met=cold_p50 <= 1000,
            notes="the wake starts a new sandbox-runtime process and waits for it to answer"),
    ]
