"""The kubelet stand-in behaves like a kubelet where tests depend on it, on the real loop.

Each pod gets its own loopback address and a real sandbox-runtime there; it turns Ready only
once that runtime answers; a deleted pod stays Terminating, still serving, for its grace period,
then its runtime stops and the pod is gone; a PersistentVolumeClaim's data outlives the pod.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from tests.metacontroller.objects import POOL, eventually, is_ready, pool, pool_ready, sandbox
from tests.metacontroller.objects import template as sandbox_template


def pod_events(stack, namespace: str, stop: threading.Event, seen: list[dict[str, Any]]) -> None:
    """Record every pod state the API server reports in the namespace, in order."""
    from kubernetes import client, watch

    api = stack.plane.api_client()
    stream = watch.Watch()
    try:
        while not stop.is_set():
            for event in stream.stream(client.CoreV1Api(api).list_namespaced_pod, namespace,
                                       timeout_seconds=5):
                seen.append(api.sanitize_for_serialization(event["object"]))
                if stop.is_set():
                    break
    finally:
        stream.stop()
        api.close()


def test_each_pod_gets_its_own_address_and_is_ready_only_once_its_runtime_answers(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    stop, seen = threading.Event(), []
    recorder = threading.Thread(target=pod_events, args=(stack, namespace, stop, seen),
                                daemon=True)
    recorder.start()
    try:
        stack.apply(sandbox_template(), namespace)
        stack.apply(pool(3), namespace)
        stack.wait_for("sandboxwarmpool", POOL, pool_ready(3), namespace=namespace, timeout=90)
    finally:
        stop.set()
        recorder.join(10)

    pods = stack.list("pods", namespace)
    addresses = [p["status"]["podIP"] for p in pods]
    assert len(set(addresses)) == 3, addresses
    for pod in pods:
        address = pod["status"]["podIP"]
        assert address.startswith("127.") and address != "127.0.0.1"
        assert pod["spec"]["nodeName"] == "kubelet-stand-in"
        answer = requests.post(f"http://{address}:8888/execute",
                               json={"command": "echo hi from $PWD"}, timeout=30)
        assert answer.json()["stdout"].startswith("hi from ")
    for name in {p["metadata"]["name"] for p in pods}:
        states = [(p["status"].get("podIP"), is_ready(p)) for p in seen
                  if p["metadata"]["name"] == name and p["status"].get("podIP")]
        # Running at its address but not Ready (runtime starting), then Ready.
        assert states[0][1] is False and states[-1][1] is True, states


def test_a_deleted_pod_stays_terminating_and_serving_for_its_grace_period(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    grace = 10
    stack.apply(sandbox("window", volume=False, grace=grace), namespace)
    ready = stack.wait_for("sandbox", "window", is_ready, namespace=namespace, timeout=60)
    url = f"http://{ready['status']['podIPs'][0]}:8888"
    assert requests.get(url + "/", timeout=10).ok

    stack.kubectl("scale", "sandbox/window", "-n", namespace, "--replicas=0")
    deleted_at = time.monotonic()
    terminating = stack.wait_for("pod", "window", lambda p: bool(
        p["metadata"].get("deletionTimestamp")), namespace=namespace, timeout=30)
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == grace
    # What a tenant sees in the window: the runtime still runs commands.
    answer = requests.post(url + "/execute", json={"command": "echo still here"}, timeout=10)
    assert answer.json()["stdout"] == "still here\n"
    assert time.monotonic() - deleted_at < grace, "too slow to observe the window"

    stack.wait_gone("pod", "window", namespace=namespace, timeout=grace + 30)
    assert time.monotonic() - deleted_at >= grace - 1, "removed before its grace period"
    eventually(lambda: not _answers(url), timeout=10)
    assert "window" not in kubelet.running()


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/", timeout=1).ok
    except requests.RequestException:
        return False
