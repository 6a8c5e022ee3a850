"""The loop survives its own parts dying mid-burst: hooks server or Metacontroller SIGKILLed while
claims pour in, then started again. Every claim still gets its own Sandbox, Ready, on a pod no
other Sandbox ever had: nothing lost, nothing shared.

Metacontroller keeps no state of its own (it re-lists and re-syncs every parent after a restart)
and answers a failed hook call by retrying with backoff, writing nothing; the hooks are pure.
These tests check that those two facts add up to no lost or doubly bound sandbox.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest
import requests

from testbed.metacontroller import MetacontrollerStack
from tests.metacontroller.objects import (
    POOL,
    SANDBOX_LABEL,
    claim,
    is_ready,
    pool,
    pool_ready,
    template,
)

CLAIMS = 8
DOWN_FOR = 4.0  # seconds the victim stays dead while claims keep coming


class BindingRecorder(threading.Thread):
    """Every value the sandbox label ever had on each pod (by uid), from a pod watch."""

    def __init__(self, stack: MetacontrollerStack, namespace: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.namespace = stack, namespace
        self.bindings: dict[str, set[str]] = defaultdict(set)
        self.names: dict[str, str] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        from kubernetes import client, watch

        api = self.stack.plane.api_client()
        stream = watch.Watch()
        try:
            while not self.stopping.is_set():
                for event in stream.stream(client.CoreV1Api(api).list_namespaced_pod,
                                           self.namespace, timeout_seconds=5):
                    pod = event["object"]
                    self.names[pod.metadata.uid] = pod.metadata.name
                    bound = (pod.metadata.labels or {}).get(SANDBOX_LABEL)
                    if bound:
                        self.bindings[pod.metadata.uid].add(bound)
                    if self.stopping.is_set():
                        break
        finally:
            stream.stop()
            api.close()


@pytest.mark.parametrize("victim", ["hooks", "metacontroller"])
def test_killed_and_restarted_mid_burst_no_sandbox_is_lost_or_shared(
        metacontroller_stack, namespace, kubelet, victim):
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    stack.apply(pool(3), namespace)
    stack.wait_for("sandboxwarmpool", POOL, pool_ready(3), namespace=namespace, timeout=90)
    recorder = BindingRecorder(stack, namespace)
    recorder.start()
    names = [f"burst-{i}" for i in range(CLAIMS)]
    try:
        apply_claims(stack, namespace, names[:CLAIMS // 2])
        stack.kill(victim)
        apply_claims(stack, namespace, names[CLAIMS // 2:])
        time.sleep(DOWN_FOR)
        # The victim really was down: nothing made the later claims' Sandboxes meanwhile.
        assert [n for n in names[CLAIMS // 2:] if stack.get("sandbox", n, namespace)] == []
        stack.ensure_running()

        sandboxes = [stack.wait_for("sandbox", name, is_ready, namespace=namespace,
                                    timeout=180) for name in names]
        for name in names:
            stack.wait_for("sandboxclaim", name, is_ready, namespace=namespace, timeout=60)
    finally:
        stack.ensure_running()  # the next test needs the whole loop, whatever happened here
        recorder.stopping.set()
        recorder.join(10)

    served = [s["status"]["podName"] for s in sandboxes]
    assert len(set(served)) == CLAIMS, f"a pod serves two sandboxes: {served}"
    twice = {recorder.names[uid]: sorted(b) for uid, b in recorder.bindings.items() if len(b) > 1}
    assert twice == {}, f"pods bound to more than one sandbox over their life: {twice}"
    listed = json.loads(stack.kubectl("get", "sandboxes", "-n", namespace, "-o", "json").stdout)
    assert sorted(s["metadata"]["name"] for s in listed["items"]) == sorted(names)
    for sandbox in sandboxes:
        pod = stack.get("pod", sandbox["status"]["podName"], namespace)
        assert pod["metadata"]["labels"][SANDBOX_LABEL] == sandbox["metadata"]["name"]
        address = sandbox["status"]["podIPs"][0]
        assert requests.get(f"http://{address}:8888/", timeout=30).ok


def apply_claims(stack: MetacontrollerStack, namespace: str, names: list[str]) -> None:
    manifest = "\n---\n".join(json.dumps(claim(n)) for n in names)
    stack.kubectl("apply", "--server-side", "--field-manager=tests", "-n", namespace, "-f", "-",
                  input=manifest)
