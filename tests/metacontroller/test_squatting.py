"""Another tenant of the namespace, with the right to create pods, PVCs and Sandboxes, tries
to serve someone else's claim from a pod of its own, or to have its PVC mounted by someone
else's Sandbox (docs/security.md, findings 32 and 33), or to run a Sandbox of its own unfenced
under a forged claim owner (finding 39).

Both work through what Kubernetes lets any pod or PVC author write. A pod labelled with a
Sandbox's uid, claiming that Sandbox's pool as controller and carrying the pool's
`controller-uid` (so Metacontroller adopts it instead of releasing it), served the victim's
claim within two seconds; the admission policy in manifests/admission now refuses it. A PVC
created under the name a Sandbox's volume claim template gives (`<vct>-<sandbox>`) was mounted
by the victim's pod (Metacontroller swallows the AlreadyExists); the Sandbox hook now starts
its pod only once every PVC it mounts is its own child.

The tenant is an impersonated user with a Role in the test's namespace; the policy is applied
as shipped, with the controller's user set to the one this loop's Metacontroller runs as.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_common.contract import CLAIM_KIND, EXTENSIONS_API, POOL_KIND, SANDBOX_API
from testbed.kube import REPO
from testbed.metacontroller import MetacontrollerStack
from tests.metacontroller.objects import (
    SANDBOX_LABEL,
    SANDBOX_UID_LABEL,
    claim,
    is_ready,
    pod_template,
    pool,
    reason,
    sandbox,
    template,
)

ADMISSION = REPO / "manifests" / "admission"
SHIPPED_CONTROLLER = "system:serviceaccount:metacontroller:metacontroller"
TENANT = "tenant-b"


@pytest.fixture
def reserved_keys_policy(metacontroller_stack: MetacontrollerStack) -> Iterator[None]:
    """manifests/admission, with the controller's user set to this loop's Metacontroller's."""
    stack = metacontroller_stack
    whoami = json.loads(stack.kubectl("auth", "whoami", "-o", "json").stdout)
    user = whoami["status"]["userInfo"]["username"]
    rendered = stack.kubectl("kustomize", str(ADMISSION)).stdout
    assert SHIPPED_CONTROLLER in rendered
    stack.kubectl("apply", "--server-side", "--field-manager=tests", "-f", "-",
                  input=rendered.replace(SHIPPED_CONTROLLER, user))
    # The API server compiles a new policy and loads its binding asynchronously: until both
    # are in force it admits everything. Wait until a pod with a reserved label is refused.
    probe = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "policy-probe", "labels": {SANDBOX_LABEL: "probe"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    deadline = time.monotonic() + 60
    while stack.kubectl("--as=policy-probe", "--as-group=system:masters", "-n", "default",
                        "create", "--dry-run=server", "-f", "-",
                        check=False, input=probe).returncode == 0:
        assert time.monotonic() < deadline, "the reserved-keys policy was not in force in 60 s"
        time.sleep(0.5)
    yield


@pytest.fixture
def tenant(metacontroller_stack: MetacontrollerStack, namespace: str) -> str:
    """A user who may create pods, PVCs, Services and Sandboxes and read our objects in the
    namespace."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "tenant"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "services"],
                 "verbs": ["create", "get", "list", "delete", "patch", "update"]},
                {"apiGroups": ["agents.x-k8s.io", "extensions.agents.x-k8s.io"],
                 "resources": ["*"], "verbs": ["get", "list"]},
                {"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes"],
                 "verbs": ["create", "patch", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "tenant"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "tenant"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": TENANT}]}
    for obj in (role, binding):
        metacontroller_stack.apply(obj, namespace)
    return TENANT


def as_tenant(stack: MetacontrollerStack, namespace: str, *args: str,
              obj: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return stack.kubectl(f"--as={TENANT}", "-n", namespace, *args, check=False,
                         input=json.dumps(obj) if obj is not None else None)


def forged_pool_pod(stack: MetacontrollerStack, namespace: str, victim: dict[str, Any],
                    pool_name: str) -> dict[str, Any]:
    """A pod that looks, to Metacontroller and the hooks, like a warm pod the pool bound to
    the victim: its uid label, the pool as controller, the pool's controller-uid."""
    found = stack.get("sandboxwarmpool", pool_name, namespace)
    assert found is not None
    pool_uid = found["metadata"]["uid"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "aaa-forged",
        "labels": {SANDBOX_UID_LABEL: victim["metadata"]["uid"],
                   SANDBOX_LABEL: victim["metadata"]["name"], "controller-uid": pool_uid},
        "ownerReferences": [{"apiVersion": EXTENSIONS_API, "kind": POOL_KIND,
                             "name": pool_name, "uid": pool_uid, "controller": True}]},
        "spec": pod_template()["spec"]}


def served_by(stack: MetacontrollerStack, namespace: str, name: str, seconds: float) -> set[str]:
    """Every pod the Sandbox and its pod-name annotation named over `seconds`."""
    named: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = stack.get("sandbox", name, namespace) or {}
        named.add((found.get("status") or {}).get("podName") or "")
        named.add(((found.get("metadata") or {}).get("annotations") or {}).get(
            "agents.x-k8s.io/pod-name", ""))
        time.sleep(0.3)
    return named - {""}


def test_a_forged_warm_pod_cannot_serve_another_tenants_claim(
        metacontroller_stack, namespace, kubelet, tenant, reserved_keys_policy):
    """Before the policy: the claim was Ready on the tenant's pod about 2 s after it was made."""
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    # A pool that cannot bind (its template is missing), so the victim offers itself for the
    # whole grace: the window is deterministic here, a race of milliseconds on a busy pool.
    stack.apply(pool(1, name="stalled", template_name="missing"), namespace)
    stack.apply(claim("victim", warmPoolRef={"name": "stalled"}), namespace)
    victim = stack.wait_for("sandbox", "victim", lambda s: reason(s) == "WaitingForWarmPod",
                            namespace=namespace, timeout=60)

    created = as_tenant(stack, namespace, "create", "-f", "-",
                        obj=forged_pool_pod(stack, namespace, victim, "stalled"))
    assert created.returncode != 0, "the forged pod was admitted"
    assert "agents.x-k8s.io" in created.stderr, created.stderr
    # Each part alone is refused too: the uid label, and the pool as owner.
    forged = forged_pool_pod(stack, namespace, victim, "stalled")
    del forged["metadata"]["ownerReferences"]
    assert as_tenant(stack, namespace, "create", "-f", "-", obj=forged).returncode != 0
    forged = forged_pool_pod(stack, namespace, victim, "stalled")
    forged["metadata"]["labels"] = {}
    assert as_tenant(stack, namespace, "create", "-f", "-", obj=forged).returncode != 0

    assert served_by(stack, namespace, "victim", 5) <= {"victim"}
    assert stack.get("pod", "aaa-forged", namespace) is None
    # Its own pod after the grace, as for any pool that cannot serve.
    done = stack.wait_for("sandboxclaim", "victim", is_ready, namespace=namespace, timeout=90)
    assert done["status"]["sandbox"]["podName"] == "victim"


def test_the_tenant_may_still_make_plain_pods_and_label_sandbox_pods(
        metacontroller_stack, namespace, kubelet, tenant, reserved_keys_policy):
    """The policy refuses only our keys and owners: a plain pod, and a label of the tenant's
    own on a sandbox's pod (keeping ours), are admitted."""
    stack = metacontroller_stack
    plain = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "plain", "labels": {"team": "b"}},
             "spec": pod_template()["spec"]}
    made = as_tenant(stack, namespace, "create", "-f", "-", obj=plain)
    assert made.returncode == 0, made.stderr
    stack.apply(sandbox("labelled", volume=False), namespace)
    stack.wait_for("sandbox", "labelled", is_ready, namespace=namespace, timeout=60)
    relabel = as_tenant(stack, namespace, "label", "pod", "labelled", "team=b")
    assert relabel.returncode == 0, relabel.stderr
    uid = stack.get("sandbox", "labelled", namespace)["metadata"]["uid"]  # type: ignore[index]
    steal = as_tenant(stack, namespace, "label", "pod", "plain", f"{SANDBOX_UID_LABEL}={uid}")
    assert steal.returncode != 0, "a reserved label was added to a plain pod"


def test_the_tenant_cannot_take_a_sandbox_pods_binding_labels_off(
        metacontroller_stack, namespace, kubelet, tenant, reserved_keys_policy):
    """A bound warm pod is told from a free one by its binding labels: taken off, its pool
    would hand it, with the tenant's files, to another Sandbox. Before: the removal was
    admitted (the policy refused only keys added or changed)."""
    stack = metacontroller_stack
    stack.apply(sandbox("bound", volume=False), namespace)
    stack.wait_for("sandbox", "bound", is_ready, namespace=namespace, timeout=60)
    for key in (SANDBOX_UID_LABEL, SANDBOX_LABEL):
        removed = as_tenant(stack, namespace, "label", "pod", "bound", f"{key}-")
        assert removed.returncode != 0, f"the tenant took {key} off a sandbox's pod"
        assert "removed by the Agent Sandbox controller only" in removed.stderr
    pod = stack.get("pod", "bound", namespace)
    assert pod is not None and SANDBOX_UID_LABEL in pod["metadata"]["labels"]


def test_a_tenants_sandbox_cannot_name_a_claim_as_its_owner(
        metacontroller_stack, namespace, kubelet, tenant, reserved_keys_policy):
    """A Sandbox a claim controls is left to its template's NetworkPolicy and gets none of its
    own (finding 39): one the tenant made naming a claim as controller, with a pod spec of its
    choosing, would run unfenced. Before: admitted, on create and as a later patch. A Sandbox
    of the tenant's own without that owner is still admitted and Ready."""
    stack = metacontroller_stack
    stack.apply(claim("mine"), namespace)
    found = stack.wait_for("sandboxclaim", "mine", None,
                           namespace=namespace, timeout=30)
    owner = {"apiVersion": SANDBOX_API, "kind": CLAIM_KIND, "name": "mine",
             "uid": found["metadata"]["uid"], "controller": True}
    forged = sandbox("forged", volume=False)
    forged["metadata"]["ownerReferences"] = [owner]
    made = as_tenant(stack, namespace, "create", "-f", "-", obj=forged)
    assert made.returncode != 0, "a tenant's Sandbox named a claim as its controller"
    assert "owner references to Agent Sandbox objects" in made.stderr
    own = sandbox("own", volume=False)
    made = as_tenant(stack, namespace, "create", "-f", "-", obj=own)
    assert made.returncode == 0, made.stderr
    patch = json.dumps({"metadata": {"ownerReferences": [owner]}})
    adopted = as_tenant(stack, namespace, "patch", "sandbox", "own", "--type=merge", "-p", patch)
    assert adopted.returncode != 0, "a tenant's Sandbox was given a claim as its controller"
    stack.wait_for("sandbox", "own", is_ready, namespace=namespace, timeout=60)


def test_a_pvc_a_sandbox_does_not_own_is_never_mounted(metacontroller_stack, namespace,
                                                       kubelet, tenant):
    """Before the fix: the victim's pod mounted the tenant's PVC and the Sandbox was Ready."""
    stack = metacontroller_stack
    squat = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "workspace-victim"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    made = as_tenant(stack, namespace, "create", "-f", "-", obj=squat)
    assert made.returncode == 0, made.stderr
    parent = stack.apply(sandbox("victim"), namespace)

    waiting = stack.wait_for("sandbox", "victim", lambda s: reason(s) == "PodNotReady",
                             namespace=namespace, timeout=60)
    assert "workspace-victim" in waiting["status"]["conditions"][0]["message"]
    time.sleep(5)  # several syncs: the Sandbox polls for its missing PVC
    assert stack.get("pod", "victim", namespace) is None, "a pod mounting the tenant's PVC"
    assert not is_ready(stack.get("sandbox", "victim", namespace))

    # Once the name is free the Sandbox makes its own PVC, and only then its pod.
    assert as_tenant(stack, namespace, "delete", "pvc", "workspace-victim",
                     "--wait=false").returncode == 0
    # The pvc-protection controller's part (this loop runs none): the PVC is used by no pod.
    stack.patch("pvc", "workspace-victim", {"metadata": {"finalizers": None}},
                namespace=namespace)
    stack.wait_gone("pvc", "workspace-victim", namespace=namespace)
    stack.wait_for("sandbox", "victim", is_ready, namespace=namespace, timeout=90)
    pvc = stack.get("persistentvolumeclaim", "workspace-victim", namespace)
    assert any(ref.get("uid") == parent["metadata"]["uid"]
               for ref in pvc["metadata"]["ownerReferences"])  # type: ignore[index]


def test_a_service_a_sandbox_does_not_own_is_never_advertised(metacontroller_stack, namespace,
                                                               kubelet, tenant):
    """Before the fix: the Sandbox was Ready with `status.serviceFQDN` naming the tenant's
    Service (Metacontroller swallows the AlreadyExists), whose DNS name leads to the
    tenant's pods; the router dials that name when no pod IP is published."""
    stack = metacontroller_stack
    squat = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "victim"},
             "spec": {"clusterIP": "None", "selector": {"team": "b"},
                      "ports": [{"port": 8888}]}}
    made = as_tenant(stack, namespace, "create", "-f", "-", obj=squat)
    assert made.returncode == 0, made.stderr
    stack.apply(sandbox("victim", volume=False), namespace)
    stack.wait_for("sandbox", "victim", is_ready, namespace=namespace, timeout=60)
    time.sleep(3)  # a few more syncs
    status = stack.get("sandbox", "victim", namespace)["status"]  # type: ignore[index]
    assert "serviceFQDN" not in status and "service" not in status, status

    assert as_tenant(stack, namespace, "delete", "service", "victim",
                     "--wait=false").returncode == 0
    # The Sandbox polls for its missing Service, makes it, and only then names it.
    named = stack.wait_for("sandbox", "victim",
                           lambda s: bool((s.get("status") or {}).get("serviceFQDN")),
                           namespace=namespace, timeout=60)
    service = stack.get("service", "victim", namespace)
    assert service is not None
    assert service["spec"]["selector"] == {SANDBOX_UID_LABEL: named["metadata"]["uid"]}
