"""Claim -> Ready on the real stack: kube-apiserver, Metacontroller, our hooks under gunicorn.

The kubelet stand-in in its instant mode (a watch on pods) marks each new pod Running and Ready
at once, so the figures measure the control loop, not image pulls or runtime start-up. Runs on
the Metacontroller the tests use (METACONTROLLER_BIN, else ../shared/bin/metacontroller beside
the repository) and the control plane's etcd v3.6; without Metacontroller it reports why.

Figures: sequential claims served by a warm pool (p50/p95/p99); the same for Sandboxes made
directly with their own (cold) pod, as the comparison; and concurrency 1/10/50: all claims
created at once against a pool of that size, time until the last is Ready, pods never shared.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.harness import Context as BenchContext
from bench.harness import Latencies, Result, Skipped, latency_result
from sandbox_common.contract import (
    CLAIM_KIND,
    CLAIMS,
    EXTENSIONS_API,
    EXTENSIONS_GROUP,
    GROUP,
    POOL_KIND,
    POOLS,
    READY,
    SANDBOX_API,
    SANDBOX_KIND,
    SANDBOXES,
    TEMPLATE_KIND,
    TEMPLATES,
    VERSION,
)
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.kubelet import Kubelet
from testbed.metacontroller import metacontroller_binary, running_stack

NS = "bench"
TEMPLATE, POOL = "python-runtime-template", "python-sandbox-warmpool"


def is_ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == READY and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


class Claims:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)

    def create(self, plural: str, body: dict[str, Any], group: str = EXTENSIONS_GROUP) -> None:
        self.custom.create_namespaced_custom_object(group, VERSION, NS, plural, body)

    def get(self, plural: str, name: str, group: str = EXTENSIONS_GROUP) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(group, VERSION, NS, plural, name)

    def delete(self, plural: str, name: str, group: str = EXTENSIONS_GROUP) -> None:
        self.custom.delete_namespaced_custom_object(group, VERSION, NS, plural, name)

    def wait(self, plural: str, name: str, predicate: Any, timeout: float = 60.0,
             group: str = EXTENSIONS_GROUP) -> dict[str, Any]:
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        stream = watch.Watch()
        while time.monotonic() < deadline:
            for event in stream.stream(self.custom.list_namespaced_custom_object, group, VERSION,
                                       NS, plural, field_selector=f"metadata.name={name}",
                                       timeout_seconds=max(1, int(deadline - time.monotonic()))):
                if event["type"] != "DELETED" and predicate(event["object"]):
                    stream.stop()
                    return event["object"]
        raise TimeoutError(f"{plural}/{name} not as expected after {timeout}s")

    def pool_ready(self, replicas: int) -> None:
        self.wait(POOLS, POOL,
                  lambda p: (p.get("status") or {}).get("readyReplicas") == replicas
                  and (p.get("status") or {}).get("replicas") == replicas, timeout=120)

    def set_pool(self, replicas: int) -> None:
        self.custom.patch_namespaced_custom_object(
            EXTENSIONS_GROUP, VERSION, NS, POOLS, POOL, {"spec": {"replicas": replicas}})
        self.pool_ready(replicas)


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": EXTENSIONS_API, "kind": CLAIM_KIND,
            "metadata": {"name": name}, "spec": {"sandboxTemplateRef": {"name": TEMPLATE}}}


def timed_claim(claims: Claims, name: str) -> float:
    start = time.perf_counter()
    claims.create(CLAIMS, claim(name))
    claims.wait(CLAIMS, name, is_ready)
    return time.perf_counter() - start


def run(ctx: BenchContext) -> list[Result]:
    binary, why_not = metacontroller_binary()
    if binary is None:
        raise Skipped(f"{why_not}; the claim benchmark needs the real loop")
    sequential, rounds = ctx.scale(30, 8), ctx.scale(3, 1)
    levels = (1, 10) if ctx.quick else (1, 10, 50)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp, \
            running_stack(Path(tmp), binary) as stack:
        stack.kubectl("create", "namespace", NS)
        stack.kubectl("wait", "--for=create", "--timeout=30s", "serviceaccount/default", "-n", NS)
        api = stack.plane.api_client()
        kubelet = Kubelet(api, NS, mode="instant")
        kubelet.start()
        claims = Claims(api)
        try:
            claims.create(TEMPLATES, {
                "apiVersion": EXTENSIONS_API, "kind": TEMPLATE_KIND,
                "metadata": {"name": TEMPLATE}, "spec": {"podTemplate": SEED_POD_TEMPLATE}})
            claims.create(POOLS, {
                "apiVersion": EXTENSIONS_API, "kind": POOL_KIND,
                "metadata": {"name": POOL},
                "spec": {"replicas": 2, "sandboxTemplateRef": {"name": TEMPLATE}}})
            claims.pool_ready(2)

            warm, cold, served_warm, counter = Latencies(), Latencies(), 0, 0
            # Each round: warm claims one after another, then Sandboxes with their own pods,
            # as separate blocks so neither measures the other's clean-up.
            for _ in range(rounds):
                samples, cold_samples = [], []
                for _ in range(sequential):
                    counter += 1
                    name = f"seq-{counter}"
                    samples.append(timed_claim(claims, name))
                    pod = claims.get(SANDBOXES, name, GROUP)["status"]["podName"]
                    served_warm += pod != name
                    claims.delete(CLAIMS, name)
                    claims.pool_ready(2)
                for _ in range(sequential):
                    counter += 1
                    start = time.perf_counter()
                    claims.create(SANDBOXES, {
                        "apiVersion": SANDBOX_API, "kind": SANDBOX_KIND,
                        "metadata": {"name": f"cold-{counter}"},
                        "spec": {"podTemplate": SEED_POD_TEMPLATE}}, GROUP)
                    claims.wait(SANDBOXES, f"cold-{counter}", is_ready, group=GROUP)
                    cold_samples.append(time.perf_counter() - start)
                    claims.delete(SANDBOXES, f"cold-{counter}", GROUP)
                warm.add_round(samples)
                cold.add_round(cold_samples)
            p50, p99 = warm.median("p50") * 1e3, warm.median("p99") * 1e3
            results.append(latency_result(
                "claims", "claim created -> Ready, warm pool (sequential)", warm,
                goal="p50 <= 150 ms, p99 <= 500 ms", met=p50 <= 150 and p99 <= 500,
                floor_name="Sandbox with its own pod -> Ready",
                ratio_to_floor=warm.median("p50") / cold.median("p50"),
                notes=f"{served_warm}/{warm.samples} claims served by a warm pod",
                extra={"cold_p50_ms": cold.median("p50") * 1e3,
                       "cold_p99_ms": cold.median("p99") * 1e3}))
            results.append(latency_result(
                "claims", "Sandbox with its own pod -> Ready (sequential)", cold))

            for level in levels:
                claims.set_pool(level)
                names = [f"burst{level}-{i}" for i in range(level)]
                start = time.perf_counter()
                with ThreadPoolExecutor(min(level, 16)) as pool:
                    durations = list(pool.map(lambda n: timed_claim(claims, n), names))
                total = time.perf_counter() - start
                pods = [claims.get(SANDBOXES, n, GROUP)["status"]["podName"]
                        for n in names]
                shared = len(pods) - len(set(pods))
                lat = Latencies()
                lat.add_round(durations)
                results.append(latency_result(
                    "claims", f"{level} claims at once -> all Ready (pool of {level})", lat,
                    throughput=level / total, throughput_unit="claims/s",
                    goal="all Ready, no pod shared" if level == 50 else "",
                    met=(shared == 0) if level == 50 else None,
                    notes=f"last Ready after {total * 1e3:.0f} ms; {shared} pods shared; "
                          f"{sum(p != n for p, n in zip(pods, names, strict=True))} warm-served",
                    extra={"total_ms": total * 1e3, "shared_pods": shared}))
                for name in names:
                    claims.delete(CLAIMS, name)
        finally:
            kubelet.stop()
            api.close()
    return results
