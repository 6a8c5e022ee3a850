"""The Sandbox loop with a real Metacontroller: a Sandbox gets its Pod, headless Service and
volume; the test plays the kubelet and the Sandbox turns Ready; scaling to zero removes only
the Pod; deleting the Sandbox lets the garbage collector remove its children; past its
shutdownTime it expires (reason SandboxExpired, volumes kept); paused and resumed
(replicas 1 -> 0 -> 1) it comes back under the same name with its volume's data. A Sandbox made
directly is fenced by a NetworkPolicy of its own; a claim's Sandbox is left to its template's.
"""

from __future__ import annotations

import time

import requests

from hooks.objects import SANDBOX_EXPIRED, SCALED_TO_ZERO
from tests.metacontroller.objects import (
    TEMPLATE,
    claim,
    is_ready,
    owned_by,
    ready_condition,
    reason,
    rfc3339,
    sandbox,
    template,
)

POD_IP = "127.0.0.1"


def test_sandbox_gets_pod_headless_service_and_volume(metacontroller_stack, namespace):
    stack = metacontroller_stack
    parent = stack.apply(sandbox("sbx"), namespace)

    pod = stack.wait_for("pod", "sbx", None, namespace=namespace)
    service = stack.wait_for("service", "sbx", None, namespace=namespace)
    pvc = stack.wait_for("persistentvolumeclaim", "workspace-sbx", None, namespace=namespace)

    assert service["spec"]["clusterIP"] == "None"
    assert all(owned_by(child, parent) for child in (pod, service, pvc))
    # The Service selects exactly the sandbox's pod.
    selector = service["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "workspace-sbx"


def test_sandbox_turns_ready_when_its_pod_does(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("ready-sbx"), namespace)
    stack.wait_for("pod", "ready-sbx", None, namespace=namespace)
    waiting = stack.wait_for("sandbox", "ready-sbx", lambda s: bool(ready_condition(s)),
                             namespace=namespace)
    assert not is_ready(waiting), "Ready before any pod was ready"

    stack.make_pod_ready("ready-sbx", POD_IP, namespace=namespace)
    ready = stack.wait_for("sandbox", "ready-sbx", is_ready, namespace=namespace)

    status = ready["status"]
    assert status["podIPs"] == [POD_IP]
    assert status["service"] == "ready-sbx"
    assert status["serviceFQDN"].startswith(f"ready-sbx.{namespace}.svc.")
    assert status["replicas"] == 1
    assert status.get("observedGeneration") in (None, ready["metadata"]["generation"])


def test_scale_to_zero_removes_only_the_pod(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("idle"), namespace)
    stack.wait_for("pod", "idle", None, namespace=namespace)

    stack.kubectl("scale", "sandbox/idle", "-n", namespace, "--replicas=0")

    stack.wait_gone("pod", "idle", namespace=namespace)
    assert stack.get("service", "idle", namespace) is not None
    assert stack.get("persistentvolumeclaim", "workspace-idle", namespace) is not None
    scaled = stack.wait_for("sandbox", "idle", lambda s: not is_ready(s)
                            and (s.get("status") or {}).get("replicas") == 0,
                            namespace=namespace)
    assert ready_condition(scaled).get("reason")


def test_deleting_the_sandbox_removes_its_children(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("gone"), namespace)
    stack.wait_for("pod", "gone", None, namespace=namespace)
    stack.wait_for("service", "gone", None, namespace=namespace)

    stack.kubectl("delete", "sandbox", "gone", "-n", namespace)

    # kube-controller-manager's garbage collector follows the ownerReferences.
    stack.wait_gone("pod", "gone", namespace=namespace, timeout=60)
    stack.wait_gone("service", "gone", namespace=namespace, timeout=60)


def test_a_sandbox_expires_at_its_shutdown_time_and_keeps_its_volumes(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    stack.apply(sandbox("brief", shutdownTime=rfc3339(20)), namespace)
    stack.wait_for("sandbox", "brief", is_ready, namespace=namespace, timeout=60)

    # No edit from here on: the hook's resyncAfterSeconds alone brings the expiry.
    expired = stack.wait_for("sandbox", "brief", lambda s: reason(s) == SANDBOX_EXPIRED,
                             namespace=namespace, timeout=60)
    assert ready_condition(expired)["status"] == "False"
    stack.wait_gone("pod", "brief", namespace=namespace, timeout=30)
    stack.wait_gone("service", "brief", namespace=namespace, timeout=30)
    assert stack.get("persistentvolumeclaim", "workspace-brief", namespace) is not None

    # The reason is kept across later syncs (a label edit makes Metacontroller sync again).
    stack.kubectl("label", "sandbox/brief", "-n", namespace, "touched=yes")
    stack.wait_for("sandbox", "brief", lambda s: s["metadata"]["labels"].get("touched"),
                   namespace=namespace)
    time.sleep(2)
    again = stack.get("sandbox", "brief", namespace)
    assert reason(again) == SANDBOX_EXPIRED
    assert stack.get("pod", "brief", namespace) is None
    assert stack.get("persistentvolumeclaim", "workspace-brief", namespace) is not None


def test_pause_and_resume_keep_the_name_and_the_volumes_data(
        metacontroller_stack, namespace, kubelet):
    stack = metacontroller_stack
    stack.apply(sandbox("pausable"), namespace)
    first = stack.wait_for("sandbox", "pausable", is_ready, namespace=namespace, timeout=60)
    first_pod = stack.get("pod", "pausable", namespace)
    url = f"http://{first['status']['podIPs'][0]}:8888"
    wrote = requests.post(url + "/execute", timeout=30, json={
        "command": "mkdir -p notes && echo 'kept across a pause' > notes/state.txt"})
    assert wrote.json()["exit_code"] == 0

    stack.kubectl("scale", "sandbox/pausable", "-n", namespace, "--replicas=0")
    paused = stack.wait_for("sandbox", "pausable", lambda s: reason(s) == SCALED_TO_ZERO
                            and s["status"].get("replicas") == 0, namespace=namespace)
    assert paused["status"]["podIPs"] == []
    stack.wait_gone("pod", "pausable", namespace=namespace, timeout=30)
    assert stack.get("service", "pausable", namespace) is not None
    assert stack.get("persistentvolumeclaim", "workspace-pausable", namespace) is not None

    stack.kubectl("scale", "sandbox/pausable", "-n", namespace, "--replicas=1")
    resumed = stack.wait_for("sandbox", "pausable", is_ready, namespace=namespace, timeout=60)
    second_pod = stack.get("pod", "pausable", namespace)
    assert second_pod["metadata"]["uid"] != first_pod["metadata"]["uid"], "a new pod"
    assert resumed["metadata"]["uid"] == first["metadata"]["uid"], "the same Sandbox"
    assert resumed["status"]["replicas"] == 1
    url = f"http://{resumed['status']['podIPs'][0]}:8888"
    read = requests.get(url + "/download/notes/state.txt", timeout=30)
    assert read.status_code == 200 and read.content == b"kept across a pause\n"
    # It lived in the claim's volume, not in either pod.
    assert (kubelet.volume_dir("workspace-pausable") / "notes" / "state.txt").exists()


def selects(policy: dict, pod: dict) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return wanted.items() <= (pod["metadata"].get("labels") or {}).items()


def test_a_sandbox_made_directly_is_fenced_by_a_network_policy_of_its_own(
        metacontroller_stack, namespace):
    """docs/security.md, finding 39: before, no NetworkPolicy selected a direct Sandbox's pod.
    Now one owned by the Sandbox selects its pod and no other; a claim's Sandbox owns none
    (its pod is its template's policy's); the policy goes with the Sandbox."""
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    parent = stack.apply(sandbox("direct", volume=False), namespace)
    stack.apply(claim("claimed"), namespace)
    pod = stack.wait_for("pod", "direct", None, namespace=namespace)
    claims_pod = stack.wait_for("pod", "claimed", None, namespace=namespace)
    stack.wait_for("networkpolicy", f"{TEMPLATE}-sandboxes", None, namespace=namespace)
    claims_sandbox = stack.get("sandbox", "claimed", namespace)
    assert claims_sandbox is not None
    policies = stack.list("networkpolicy", namespace)
    fencing_direct = [p["metadata"]["name"] for p in policies if selects(p, pod)]
    fencing_claimed = [p["metadata"]["name"] for p in policies if selects(p, claims_pod)]
    assert fencing_direct == ["direct-sandbox"], fencing_direct
    assert fencing_claimed == [f"{TEMPLATE}-sandboxes"], fencing_claimed
    (own,) = [p for p in policies if p["metadata"]["name"] == "direct-sandbox"]
    assert owned_by(own, parent)
    assert not any(owned_by(p, claims_sandbox) for p in policies)

    stack.kubectl("delete", "sandbox", "direct", "-n", namespace)
    stack.wait_gone("networkpolicy", "direct-sandbox", namespace=namespace)
