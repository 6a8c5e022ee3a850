"""The walkthrough's warm pool on a real Metacontroller: template, pool of two, claims served warm,
and the pool's own lifecycle while pods serve claims (scale to zero, template change, deletion).

The kubelet stand-in (conftest `kubelet`) runs a real sandbox-runtime for every pod at its own
loopback address, so "the bound pod stays" also means "its tenant can still run commands".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from testbed.kubelet import Kubelet
from testbed.metacontroller import MetacontrollerStack
from tests.metacontroller.objects import (
    POOL,
    SANDBOX_LABEL,
    SANDBOX_UID_LABEL,
    TEMPLATE,
    claim,
    free_warm,
    is_ready,
    live,
    pool,
    pool_ready,
    sandbox,
    template,
    warm_pool,
)


@pytest.fixture
def walkthrough(metacontroller_stack, namespace, kubelet) -> Iterator[tuple[Any, str]]:
    """The seed's template and warm pool of two, warmed, with the kubelet stand-in running."""
    warm_pool(metacontroller_stack, namespace, 2)
    yield metacontroller_stack, namespace


def serve(stack: MetacontrollerStack, namespace: str, name: str) -> str:
    """Claim `name`, wait until its Sandbox is Ready, return the serving pod's name."""
    stack.apply(claim(name), namespace)
    sandbox = stack.wait_for("sandbox", name, is_ready, namespace=namespace, timeout=90)
    return str(sandbox["status"]["podName"])


def runs_commands(kubelet: Kubelet, pod_name: str) -> bool:
    answer = requests.post(f"http://{kubelet.address_of(pod_name)}:8888/execute",
                           json={"command": "echo alive"}, timeout=30)
    return bool(answer.json()["stdout"] == "alive\n")


def test_pool_warms_two_fenced_pods(walkthrough):
    stack, namespace = walkthrough
    warm = free_warm(stack.list("pods", namespace))
    assert len(warm) == 2
    for pod in warm:
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["runtimeClassName"] == "gvisor"
        assert pod["metadata"]["labels"]["agents.x-k8s.io/sandbox-template"] == TEMPLATE
    policy = stack.wait_for("networkpolicy", f"{TEMPLATE}-sandboxes", None, namespace=namespace)
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "agents.x-k8s.io/sandbox-template": TEMPLATE}


def test_claim_is_served_by_a_warm_pod_and_the_pool_refills(walkthrough, kubelet):
    stack, namespace = walkthrough
    warm_before = {p["metadata"]["name"] for p in free_warm(stack.list("pods", namespace))}
    serving = serve(stack, namespace, "my-claim")
    done = stack.wait_for("sandboxclaim", "my-claim", is_ready, namespace=namespace, timeout=60)
    assert serving in warm_before, "a free warm pod should have served the claim"
    assert done["status"]["sandbox"]["name"] == "my-claim"
    assert stack.get("pod", "my-claim", namespace) is None, "no cold pod"
    pod = stack.get("pod", serving, namespace)
    sandbox = stack.get("sandbox", "my-claim", namespace)
    assert pod["metadata"]["labels"][SANDBOX_LABEL] == "my-claim"
    assert pod["metadata"]["labels"][SANDBOX_UID_LABEL] == sandbox["metadata"]["uid"]
    assert runs_commands(kubelet, serving)
    service = stack.get("service", "my-claim", namespace)
    assert service["spec"]["selector"] == {SANDBOX_UID_LABEL: sandbox["metadata"]["uid"]}
    stack.wait_for("sandbox", "my-claim",
                   lambda s: s["metadata"].get("annotations", {}).get(
                       "agents.x-k8s.io/pod-name") == serving, namespace=namespace)
    stack.wait_for("sandboxwarmpool", POOL, pool_ready(2), namespace=namespace, timeout=60)

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
        sandbox = stack.wait_for("sandbox", name, is_ready, namespace=namespace, timeout=90)
        served.append(sandbox["status"]["podName"])
    assert len(set(served)) == len(names), served
    warm_served = [s for s in served if s.startswith(POOL)]
    assert len(warm_served) >= 2, served
    for pod in stack.list("pods", namespace):
        bound = pod["metadata"].get("labels", {}).get(SANDBOX_LABEL)
        if bound and live(pod):
            assert stack.get("sandbox", bound, namespace)["status"]["podName"] == \
                pod["metadata"]["name"]


def test_scale_to_zero_keeps_the_pod_that_serves_a_claim(walkthrough, kubelet):
    stack, namespace = walkthrough
    serving = serve(stack, namespace, "keeper")
    stack.kubectl("scale", "sandboxwarmpool", POOL, "--replicas=0", "-n", namespace)
    stack.wait_for("sandboxwarmpool", POOL,
                   lambda p: (p.get("status") or {}).get("replicas") == 0,
                   namespace=namespace, timeout=60)
    for pod in stack.list("pods", namespace):
        if pod["metadata"]["name"] != serving:
            stack.wait_gone("pod", pod["metadata"]["name"], namespace=namespace, timeout=30)
    assert live(stack.get("pod", serving, namespace))
    assert is_ready(stack.get("sandbox", "keeper", namespace))
    assert runs_commands(kubelet, serving)

    stack.kubectl("delete", "sandboxclaim", "keeper", "-n", namespace, "--wait=false")
    stack.wait_gone("pod", serving, namespace=namespace, timeout=60)
    assert stack.list("pods", namespace) == [], "scaled to zero: nothing refills"


def test_a_template_change_while_bound_keeps_the_bound_pod_and_rewarms_with_the_new_one(
        walkthrough, kubelet):
    stack, namespace = walkthrough
    serving = serve(stack, namespace, "steady")
    bound_uid = stack.get("pod", serving, namespace)["metadata"]["uid"]

    stack.apply(template(image="registry.example/python-runtime:v2"), namespace)

    def rewarmed() -> bool:
        warm = free_warm(stack.list("pods", namespace))
        images = {p["spec"]["containers"][0]["image"] for p in warm}
        ready = stack.get("sandboxwarmpool", POOL, namespace)
        return images == {"registry.example/python-runtime:v2"} and pool_ready(2)(ready)
    stack.wait_for("sandboxwarmpool", POOL, lambda _: rewarmed(), namespace=namespace,
                   timeout=90)
    pod = stack.get("pod", serving, namespace)
    assert pod["metadata"]["uid"] == bound_uid and live(pod), "the bound pod was replaced"
    assert pod["spec"]["containers"][0]["image"].endswith(":v0.1.0")
    assert is_ready(stack.get("sandbox", "steady", namespace))
    assert runs_commands(kubelet, serving)


def test_pool_deletion_waits_for_the_pods_that_serve_claims(walkthrough, kubelet):
    stack, namespace = walkthrough
    serving = serve(stack, namespace, "holder")
    stack.kubectl("delete", "sandboxwarmpool", POOL, "-n", namespace, "--wait=false")

    held = stack.wait_for("sandboxwarmpool", POOL,
                          lambda p: bool(p["metadata"].get("deletionTimestamp")),
                          namespace=namespace)
    assert held["metadata"].get("finalizers"), "Metacontroller's finalizer holds the pool"
    for pod in stack.list("pods", namespace):
        if pod["metadata"]["name"] != serving:
            stack.wait_gone("pod", pod["metadata"]["name"], namespace=namespace, timeout=30)
    assert stack.get("sandboxwarmpool", POOL, namespace) is not None
    assert live(stack.get("pod", serving, namespace))
    assert is_ready(stack.get("sandbox", "holder", namespace))
    assert runs_commands(kubelet, serving)

    stack.kubectl("delete", "sandboxclaim", "holder", "-n", namespace, "--wait=false")
    stack.wait_gone("sandboxwarmpool", POOL, namespace=namespace, timeout=60)
    stack.wait_gone("pod", serving, namespace=namespace, timeout=60)
    assert stack.list("pods", namespace) == []


def test_a_template_silent_on_the_runtime_class_makes_gvisor_pods_that_stay_as_made(
        metacontroller_stack, namespace, kubelet):
    """Warm and cold pods of a template that names no RuntimeClass run under gVisor
    (docs/security.md, finding 37), and a sync after they were made updates none of them:
    the class we send reads back as sent, so Metacontroller's 3-way merge has nothing to do."""
    stack = metacontroller_stack
    silent = template()
    silent["spec"]["podTemplate"]["spec"].pop("runtimeClassName")
    stack.apply(silent, namespace)
    stack.apply(pool(1), namespace)
    stack.wait_for("sandboxwarmpool", POOL, pool_ready(1), namespace=namespace, timeout=90)
    cold = sandbox("cold", volume=False)
    cold["spec"]["podTemplate"]["spec"].pop("runtimeClassName")
    stack.apply(cold, namespace)
    stack.wait_for("sandbox", "cold", is_ready, namespace=namespace, timeout=90)
    pods = {p["metadata"]["name"]: p for p in stack.list("pods", namespace) if live(p)}
    assert len(pods) == 2 and "cold" in pods
    assert {p["spec"].get("runtimeClassName") for p in pods.values()} == {"gvisor"}
    versions = {n: p["metadata"]["resourceVersion"] for n, p in pods.items()}
    # A spec change syncs the pool (and makes a second pod); the first stays as it was.
    stack.kubectl("patch", "sandboxwarmpool", POOL, "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"replicas": 2}}')
    stack.wait_for("sandboxwarmpool", POOL, pool_ready(2), namespace=namespace, timeout=90)
    for name, version in versions.items():
        assert stack.get("pod", name, namespace)["metadata"]["resourceVersion"] == version, name
