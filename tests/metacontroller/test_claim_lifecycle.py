"""A SandboxClaim's whole life on a real Metacontroller: served by a pod made for it when no warm
pod is free,
waiting (with a reason) for a missing template or pool, deleted with everything it made, and
its lifecycle (shutdownTime, shutdownPolicy) honoured as it is when created and as a user edits
it later: the Sandbox's deadline follows the claim's, and the claim never says its pod is gone
while that pod still runs.

The kubelet stand-in runs a real sandbox-runtime per pod (conftest `kubelet`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hooks.objects import (
    EXPIRED,
    POD_NAME_ANNOTATION,
    POOL_KIND,
    POOL_NOT_FOUND,
    SANDBOX_EXPIRED,
    SANDBOX_READY,
    SANDBOX_UID_LABEL,
    TEMPLATE_NOT_FOUND,
    WAITING_FOR_WARM_POD,
)
from testbed.metacontroller import MetacontrollerStack
from tests.metacontroller.objects import (
    POOL,
    SANDBOX_LABEL,
    X,
    claim,
    is_ready,
    live,
    pool,
    ready_condition,
    reason,
    rfc3339,
    template,
    warm_pool,
)


@pytest.fixture
def warm(metacontroller_stack, namespace, kubelet) -> Iterator[tuple[MetacontrollerStack, str]]:
    """The seed's template and a warm pool of one, warmed."""
    warm_pool(metacontroller_stack, namespace, 1)
    yield metacontroller_stack, namespace


def serving_pods(stack: MetacontrollerStack, namespace: str, name: str) -> list[dict[str, Any]]:
    return [p for p in stack.list("pods", namespace)
            if p["metadata"].get("labels", {}).get(SANDBOX_LABEL) == name]


def test_a_claim_with_an_empty_pool_is_served_by_a_pod_the_pool_makes_for_it(
        metacontroller_stack, namespace, kubelet):
    """No free warm pod: the pool makes one bound to the claim's Sandbox, rather than leaving
    the Sandbox to start its own after the warm-pod grace (5 s)."""
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    stack.apply(pool(0), namespace)
    # A claim picks among the pools its template lists (one template sync after a pool).
    stack.wait_for("sandboxtemplate", "python-runtime-template",
                   lambda t: (t.get("status") or {}).get("warmPools") == [POOL],
                   namespace=namespace, timeout=60)
    stack.apply(claim("solo"), namespace)
    sandbox = stack.wait_for("sandbox", "solo", is_ready, namespace=namespace, timeout=60)
    served = stack.get("pod", sandbox["status"]["podName"], namespace)
    assert served is not None
    owner = next(r for r in served["metadata"]["ownerReferences"] if r.get("controller"))
    assert (owner["kind"], owner["name"]) == (POOL_KIND, POOL)
    labels = served["metadata"]["labels"]
    assert labels[SANDBOX_UID_LABEL] == sandbox["metadata"]["uid"]
    assert stack.get("pod", "solo", namespace) is None, "no pod of its own: no grace waited"


def test_a_missing_template_is_a_condition_until_the_template_appears(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    stack.apply(claim("early", template_name="later"), namespace)
    waiting = stack.wait_for("sandboxclaim", "early", lambda c: reason(c) == TEMPLATE_NOT_FOUND,
                             namespace=namespace)
    assert "later" in ready_condition(waiting)["message"]
    assert stack.get("sandbox", "early", namespace) is None

    stack.apply(template("later"), namespace)
    stack.wait_for("sandboxclaim", "early", is_ready, namespace=namespace, timeout=60)
    assert reason(stack.get("sandboxclaim", "early", namespace)) == SANDBOX_READY


def test_a_missing_pool_is_a_condition(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply({"apiVersion": X, "kind": "SandboxClaim", "metadata": {"name": "c"},
                 "spec": {"warmPoolRef": {"name": "nope"}}}, namespace)
    missing = stack.wait_for("sandboxclaim", "c", lambda c: reason(c) == POOL_NOT_FOUND,
                             namespace=namespace)
    assert "nope" in ready_condition(missing)["message"]
    assert stack.get("sandbox", "c", namespace) is None


def test_deleting_a_claim_deletes_its_sandbox_service_and_pod(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    made = stack.apply(claim("bye"), namespace)
    sandbox = stack.wait_for("sandbox", "bye", is_ready, namespace=namespace, timeout=60)
    assert sandbox["metadata"]["ownerReferences"][0]["uid"] == made["metadata"]["uid"]
    stack.wait_for("service", "bye", None, namespace=namespace)

    stack.kubectl("delete", "sandboxclaim", "bye", "-n", namespace, "--wait=false")
    for kind in ("sandbox", "service", "pod"):
        stack.wait_gone(kind, "bye", namespace=namespace, timeout=60)


@pytest.mark.parametrize(("policy", "sandbox_kept"), [("Delete", False), ("Retain", True)])
def test_claim_expiry_follows_its_shutdown_policy(warm, policy: str, sandbox_kept: bool):
    stack, namespace = warm
    deadline = rfc3339(20)
    stack.apply(claim("temp", lifecycle={"shutdownTime": deadline, "shutdownPolicy": policy}),
                namespace)
    sandbox = stack.wait_for("sandbox", "temp", is_ready, namespace=namespace, timeout=60)
    assert sandbox["spec"]["shutdownTime"] == deadline
    serving = sandbox["status"]["podName"]

    stack.wait_for("sandboxclaim", "temp", lambda c: reason(c) == EXPIRED, namespace=namespace,
                   timeout=60)
    stack.wait_gone("pod", serving, namespace=namespace, timeout=30)
    if sandbox_kept:
        kept = stack.wait_for("sandbox", "temp", lambda s: reason(s) == SANDBOX_EXPIRED,
                              namespace=namespace)
        assert stack.get("service", "temp", namespace) is None
        assert kept["metadata"]["uid"] == sandbox["metadata"]["uid"]
    else:
        stack.wait_gone("sandbox", "temp", namespace=namespace, timeout=30)
    assert ready_condition(stack.get("sandboxclaim", "temp", namespace))["status"] == "False"


def test_extending_a_live_claims_shutdown_time_extends_its_sandbox(warm):
    stack, namespace = warm
    stack.apply(claim("longer", lifecycle={"shutdownTime": rfc3339(25)}), namespace)
    sandbox = stack.wait_for("sandbox", "longer", is_ready, namespace=namespace, timeout=60)
    serving = sandbox["status"]["podName"]

    extended = rfc3339(3600)
    stack.patch("sandboxclaim", "longer", {"spec": {"lifecycle": {"shutdownTime": extended}}},
                namespace=namespace)
    stack.wait_for("sandbox", "longer", lambda s: s["spec"].get("shutdownTime") == extended,
                   namespace=namespace)

    time.sleep(max(0.0, _seconds_until(sandbox["spec"]["shutdownTime"])) + 5)
    assert is_ready(stack.get("sandbox", "longer", namespace)), "expired on the old deadline"
    assert is_ready(stack.get("sandboxclaim", "longer", namespace))
    assert live(stack.get("pod", serving, namespace))


def _seconds_until(moment: str) -> float:
    from datetime import UTC, datetime

    from hooks.objects import parse_time

    return (parse_time(moment) - datetime.now(UTC)).total_seconds()


def test_a_retained_claims_policy_changed_to_delete_deletes_its_sandbox(warm):
    stack, namespace = warm
    stack.apply(claim("undecided", lifecycle={"shutdownTime": rfc3339(15),
                                              "shutdownPolicy": "Retain"}), namespace)
    stack.wait_for("sandbox", "undecided", is_ready, namespace=namespace, timeout=60)
    stack.wait_for("sandbox", "undecided", lambda s: reason(s) == SANDBOX_EXPIRED,
                   namespace=namespace, timeout=60)

    stack.patch("sandboxclaim", "undecided", {"spec": {"lifecycle": {"shutdownPolicy": "Delete"}}},
                namespace=namespace)
    stack.wait_gone("sandbox", "undecided", namespace=namespace, timeout=30)
    assert reason(stack.get("sandboxclaim", "undecided", namespace)) == EXPIRED


def test_a_claims_policy_changed_to_retain_before_expiry_keeps_its_sandbox(warm):
    stack, namespace = warm
    stack.apply(claim("keep", lifecycle={"shutdownTime": rfc3339(20),
                                         "shutdownPolicy": "Delete"}), namespace)
    stack.wait_for("sandbox", "keep", is_ready, namespace=namespace, timeout=60)
    stack.patch("sandboxclaim", "keep", {"spec": {"lifecycle": {"shutdownPolicy": "Retain"}}},
                namespace=namespace)

    stack.wait_for("sandbox", "keep", lambda s: reason(s) == SANDBOX_EXPIRED,
                   namespace=namespace, timeout=60)
    stack.wait_for("sandboxclaim", "keep", lambda c: reason(c) == EXPIRED, namespace=namespace)
    time.sleep(2)  # a Delete policy would now be deleting it
    assert stack.get("sandbox", "keep", namespace) is not None


class ClaimWatcher(threading.Thread):
    """Samples (claim message, live pods serving the claim's Sandbox), claim first: a message
    read before a pod was seen live cannot be excused by a deletion that came between."""

    def __init__(self, stack: MetacontrollerStack, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.namespace, self.name = stack, namespace, name
        self.samples: list[tuple[str, list[str]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            message = ready_condition(self.stack.get("sandboxclaim", self.name,
                                                     self.namespace)).get("message", "")
            pods = [p["metadata"]["name"] for p in serving_pods(self.stack, self.namespace,
                                                                  self.name) if live(p)]
            self.samples.append((message, pods))
            time.sleep(0.1)


def test_a_claim_never_says_its_pod_is_gone_while_the_pod_runs(warm):
    """A lifecycle added to a live, retained claim: claim and Sandbox expire together."""
    stack, namespace = warm
    stack.apply(claim("honest"), namespace)
    serving = stack.wait_for("sandbox", "honest", is_ready, namespace=namespace,
                             timeout=60)["status"]["podName"]
    watcher = ClaimWatcher(stack, namespace, "honest")
    watcher.start()
    try:
        stack.patch("sandboxclaim", "honest", {"spec": {"lifecycle": {
            "shutdownTime": rfc3339(5), "shutdownPolicy": "Retain"}}}, namespace=namespace)
        stack.wait_for("sandbox", "honest", lambda s: reason(s) == SANDBOX_EXPIRED,
                       namespace=namespace, timeout=60)
        stack.wait_gone("pod", serving, namespace=namespace, timeout=30)
        stack.wait_for("sandboxclaim", "honest",
                       lambda c: "its pod is deleted" in ready_condition(c).get("message", ""),
                       namespace=namespace)
    finally:
        watcher.stopping.set()
        watcher.join(10)
    said_gone = [(m, pods) for m, pods in watcher.samples
                 if ("stopped" in m or "deleted" in m)]
    assert said_gone, watcher.samples[-5:]
    assert all(not pods for _, pods in said_gone), [s for s in said_gone if s[1]][:3]


LAST_APPLIED = "metacontroller.k8s.io/last-applied-configuration"


def test_a_claims_sandbox_whose_podnotready_was_written_back_to_waiting_still_turns_ready(
        metacontroller_stack, namespace, kubelet):
    """Seen in cold bursts: a Sandbox that started its own pod and wrote PodNotReady had it
    written back to WaitingForWarmPod by an answer from a parent read before that write. It
    held that status for its claim to name the pod, and the claim names a Sandbox's own pod
    only under PodNotReady: never Ready. Here the same state is set while Metacontroller is
    down (its own pod Ready, no annotation, WaitingForWarmPod); its restart syncs both."""
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    stack.apply(claim("stale"), namespace)
    sandbox = stack.wait_for("sandbox", "stale", is_ready, namespace=namespace, timeout=90)
    assert sandbox["status"]["podName"] == "stale"
    stack.kill("metacontroller")
    try:
        # Never written: gone from the Sandbox and from what its claim last applied.
        applied = json.loads(sandbox["metadata"]["annotations"][LAST_APPLIED])
        applied["metadata"].pop("annotations")
        stack.kubectl("annotate", "sandbox", "stale", "-n", namespace, "--overwrite",
                      f"{POD_NAME_ANNOTATION}-",
                      f"{LAST_APPLIED}={json.dumps(applied, sort_keys=True)}")
        condition = {**ready_condition(sandbox), "status": "False",
                     "reason": WAITING_FOR_WARM_POD, "message": "waiting for a warm pod"}
        stack.kubectl("patch", "sandbox", "stale", "-n", namespace, "--subresource=status",
                      "--type=merge", "-p", json.dumps({"status": {
                          "podName": None, "podIPs": [], "replicas": 0,
                          "conditions": [condition]}}))
        assert reason(stack.get("sandbox", "stale", namespace)) == WAITING_FOR_WARM_POD
    finally:
        stack.ensure_running()
    sandbox = stack.wait_for("sandbox", "stale", is_ready, namespace=namespace, timeout=60)
    assert sandbox["status"]["podName"] == "stale"
    assert sandbox["metadata"]["annotations"][POD_NAME_ANNOTATION] == "stale"
