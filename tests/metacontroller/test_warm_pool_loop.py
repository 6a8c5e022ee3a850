"""The walkthrough on a real Metacontroller: template, warm pool of two, claims served warm.

The tests play the kubelet with a background thread that marks every pending pod of the
namespace Running and Ready at 127.0.0.1. Skipped (reason printed) unless METACONTROLLER_BIN
names a Metacontroller binary.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.hookrequests import SEED_POD_TEMPLATE
from tests.metacontroller.stack import Kubelet

X = "extensions.agents.x-k8s.io/v1alpha1"
POOL = "python-sandbox-warmpool"
TEMPLATE = "python-runtime-template"
SANDBOX_LABEL = "agents.x-k8s.io/sandbox"
SANDBOX_UID_LABEL = "agents.x-k8s.io/sandbox-uid"
POOL_LABEL = "agents.x-k8s.io/warm-pool"


def ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pods(stack, namespace: str) -> list[dict[str, Any]]:
    out = stack.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    return json.loads(out)["items"]


def free_warm(stack, namespace: str) -> list[dict[str, Any]]:
    return [p for p in pods(stack, namespace)
            if POOL_LABEL in p["metadata"].get("labels", {})
            and SANDBOX_LABEL not in p["metadata"]["labels"]
            and not p["metadata"].get("deletionTimestamp")]


@contextlib.contextmanager
def kubelet(stack, namespace: str) -> Iterator[None]:
    """Mark every pod of the namespace Ready as soon as it appears, until the block ends."""
    api = stack.plane.api_client()
    player = Kubelet(api, namespace)
    player.start()
    try:
        yield
    finally:
        player.stop()
        api.close()


@pytest.fixture
def walkthrough(metacontroller_stack, namespace) -> Iterator[tuple[Any, str]]:
    """The seed's template and warm pool of two, warmed, with the kubelet running."""
    stack = metacontroller_stack
    stack.apply({"apiVersion": X, "kind": "SandboxTemplate", "metadata": {"name": TEMPLATE},
                 "spec": {"podTemplate": SEED_POD_TEMPLATE}}, namespace)
    stack.apply({"apiVersion": X, "kind": "SandboxWarmPool", "metadata": {"name": POOL},
                 "spec": {"replicas": 2, "sandboxTemplateRef": {"name": TEMPLATE}}}, namespace)
    with kubelet(stack, namespace):
        stack.wait_for("sandboxwarmpool", POOL,
                       lambda p: (p.get("status") or {}).get("readyReplicas") == 2,
                       namespace=namespace, timeout=60)
        yield stack, namespace


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": X, "kind": "SandboxClaim", "metadata": {"name": name},
            "spec": {"sandboxTemplateRef": {"name": TEMPLATE}}}


def test_pool_warms_two_fenced_pods(walkthrough):
    stack, namespace = walkthrough
    warm = free_warm(stack, namespace)
    assert len(warm) == 2
    for pod in warm:
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["runtimeClassName"] == "gvisor"
        assert pod["metadata"]["labels"]["agents.x-k8s.io/sandbox-template"] == TEMPLATE
    policy = stack.wait_for("networkpolicy", f"{TEMPLATE}-sandboxes", None, namespace=namespace)
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "agents.x-k8s.io/sandbox-template": TEMPLATE}


def test_claim_is_served_by_a_warm_pod_and_the_pool_refills(walkthrough):
    stack, namespace = walkthrough
    warm_before = {p["metadata"]["name"] for p in free_warm(stack, namespace)}
    stack.apply(claim("my-claim"), namespace)
    done = stack.wait_for("sandboxclaim", "my-claim", ready, namespace=namespace, timeout=60)
    sandbox = stack.wait_for("sandbox", "my-claim", ready, namespace=namespace)
    serving = sandbox["status"]["podName"]
    assert serving in warm_before, "a free warm pod should have served the claim"
    assert done["status"]["sandbox"]["name"] == "my-claim"
    assert stack.get("pod", "my-claim", namespace) is None, "no cold pod"
    pod = stack.get("pod", serving, namespace)
    assert pod["metadata"]["labels"][SANDBOX_LABEL] == "my-claim"
    assert pod["metadata"]["labels"][SANDBOX_UID_LABEL] == sandbox["metadata"]["uid"]
    service = stack.get("service", "my-claim", namespace)
    assert service["spec"]["selector"] == {SANDBOX_UID_LABEL: sandbox["metadata"]["uid"]}
    stack.wait_for("sandbox", "my-claim",
                   lambda s: s["metadata"].get("annotations", {}).get(
                       "agents.x-k8s.io/pod-name") == serving, namespace=namespace)
    stack.wait_for("sandboxwarmpool", POOL,
                   lambda p: (p.get("status") or {}).get("readyReplicas") == 2,
                   namespace=namespace, timeout=60)

    stack.kubectl("delete", "sandboxclaim", "my-claim", "-n", namespace, "--wait=false")
    stack.wait_gone("sandbox", "my-claim", namespace=namespace, timeout=60)
    stack.wait_gone("pod", serving, namespace=namespace, timeout=60)


def test_many_claims_at_once_never_share_a_pod(walkthrough):
    stack, namespace = walkthrough
    names = [f"c{i}" for i in range(6)]
    manifest = "\n---\n".join(json.dumps(claim(n)) for n in names)
    stack.kubectl("apply", "--server-side", "--field-manager=tests", "-n", namespace, "-f", "-",
                  input=manifest)
    served = []
    for name in names:
        sandbox = stack.wait_for("sandbox", name, ready, namespace=namespace, timeout=90)
        served.append(sandbox["status"]["podName"])
    assert len(set(served)) == len(names), served
    warm_served = [s for s in served if s.startswith(POOL)]
    assert len(warm_served) >= 2, served
    for pod in pods(stack, namespace):
        bound = pod["metadata"].get("labels", {}).get(SANDBOX_LABEL)
        if bound and POOL_LABEL in pod["metadata"]["labels"]:
            assert stack.get("sandbox", bound, namespace)["status"]["podName"] == \
                pod["metadata"]["name"]


def test_scale_down_keeps_the_pod_that_serves_a_claim(walkthrough):
    stack, namespace = walkthrough
    stack.apply(claim("keeper"), namespace)
    serving = stack.wait_for("sandbox", "keeper", ready, namespace=namespace,
                             timeout=60)["status"]["podName"]
    stack.kubectl("scale", "sandboxwarmpool", POOL, "--replicas=0", "-n", namespace)
    stack.wait_for("sandboxwarmpool", POOL,
                   lambda p: (p.get("status") or {}).get("replicas") == 0,
                   namespace=namespace, timeout=60)
    assert stack.get("pod", serving, namespace) is not None
    assert ready(stack.get("sandbox", "keeper", namespace))
