"""Sandboxes and SandboxTemplates run under gVisor and keep off the node, on a real
kube-apiserver (manifests/admission/pod-templates.yaml; docs/security.md, findings 37, 38).

The policy is applied as shipped, and removed again at the end of this module (the API server
is shared by the whole session). Before it, a tenant who may create Sandboxes chose any
RuntimeClass (runc: no gVisor) and the node's namespaces or files, and a template that named no
RuntimeClass made pods without one. Each refusal must name the field.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from hooks import sandbox
from sandbox_common.contract import EXTENSIONS_API, SANDBOX_API
from testbed import kube
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, sync_request
from testbed.support import REPO
from tests.controlplane.conftest import fresh_namespace

POLICY = REPO / "manifests" / "admission" / "pod-templates.yaml"
EXAMPLE_FILES = sorted([*(REPO / "manifests" / "examples").glob("*.yaml"),
                        *(REPO / "agentic_sandbox" / "templates").glob("*.yaml")])
KINDS = {"Sandbox": SANDBOX_API, "SandboxTemplate": EXTENSIONS_API}
RESOURCES = {"Sandbox": "sandboxes.agents.x-k8s.io",
             "SandboxTemplate": "sandboxtemplates.extensions.agents.x-k8s.io"}
NOW = datetime.now(UTC)


def pod_template(**spec: Any) -> dict[str, Any]:
    """The seed's pod template with `spec` fields set (None removes one)."""
    template = copy.deepcopy(SEED_POD_TEMPLATE)
    for key, value in spec.items():
        if value is None:
            template["spec"].pop(key, None)
        else:
            template["spec"][key] = value
    return template


def privileged(group: str) -> dict[str, Any]:
    containers = copy.deepcopy(SEED_POD_TEMPLATE["spec"]["containers"])
    extra = {"name": "helper", "image": "busybox", "securityContext": {"privileged": True}}
    if group == "containers":
        return pod_template(containers=[*containers, extra])
    return pod_template(initContainers=[extra])


# case -> (pod template, what the refusal must say)
REFUSED = {
    "runtime class runc": (pod_template(runtimeClassName="runc"),
                           "spec.podTemplate.spec.runtimeClassName: must be gvisor"),
    "hostNetwork": (pod_template(hostNetwork=True), "spec.podTemplate.spec.hostNetwork"),
    "hostPID": (pod_template(hostPID=True), "spec.podTemplate.spec.hostPID"),
    "hostIPC": (pod_template(hostIPC=True), "spec.podTemplate.spec.hostIPC"),
    "a privileged container": (privileged("containers"),
                               "container helper: securityContext.privileged"),
    "a privileged init container": (privileged("initContainers"),
                                    "container helper: securityContext.privileged"),
    "a hostPort": (pod_template(containers=[{
        **SEED_POD_TEMPLATE["spec"]["containers"][0],
        "ports": [{"containerPort": 8888, "hostPort": 8888}]}]),
        "container python-runtime: ports[].hostPort"),
    "a hostPath volume": (pod_template(volumes=[{"name": "node", "hostPath": {"path": "/"}}]),
                          "spec.podTemplate.spec.volumes: node: hostPath"),
}
ADMITTED = {
    "the seed's template": SEED_POD_TEMPLATE,
    "no runtime class": pod_template(runtimeClassName=None),
    "an empty runtime class": pod_template(runtimeClassName=""),
    "host fields false": pod_template(hostNetwork=False, hostPID=False, hostIPC=False),
    "other volumes": pod_template(volumes=[{"name": "scratch", "emptyDir": {}}]),
}


def manifest(kind: str, name: str, template: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": KINDS[kind], "kind": kind, "metadata": {"name": name},
                       "spec": {"podTemplate": template}})


def create(plane: kube.ControlPlane, namespace: str, body: str,
           *dry_run: str) -> str | None:
    """None when the API server admits `body`, else its refusal."""
    done = plane.kubectl("create", "-n", namespace, *dry_run, "-f", "-", input=body,
                         check=False)
    return None if done.returncode == 0 else done.stderr


def refused(plane: kube.ControlPlane, namespace: str, body: str) -> bool:
    return create(plane, namespace, body, "--dry-run=server") is not None


@pytest.fixture(scope="module")
def policy(control_plane: kube.ControlPlane, crds: list[str]) -> Iterator[dict[str, str]]:
    """The policy as shipped; yields the objects made before it was in force (kind -> name, in
    namespace 'early'), for the updates that must stay possible."""
    plane = control_plane
    with fresh_namespace(plane, "vap") as namespace:
        early = {}
        for kind in KINDS:
            early[kind] = f"early-{kind.lower()}"
            made = create(plane, namespace, manifest(kind, early[kind], REFUSED["hostNetwork"][0]))
            assert made is None, made
        plane.kubectl("apply", "--server-side", "--field-manager=tests", "-f", str(POLICY))
        # The API server loads a new policy and its binding asynchronously: a second or so.
        probe = manifest("Sandbox", "probe", REFUSED["runtime class runc"][0])
        deadline = time.monotonic() + 60
        while not refused(plane, namespace, probe):
            assert time.monotonic() < deadline, "the policy was not in force in 60 s"
            time.sleep(0.5)
        try:
            yield {"namespace": namespace, **early}
        finally:
            plane.kubectl("delete", "-f", str(POLICY), "--wait=true", check=False)
            deadline = time.monotonic() + 60
            while refused(plane, namespace, probe) and time.monotonic() < deadline:
                time.sleep(0.5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", REFUSED)
def test_a_template_off_gvisor_or_onto_the_node_is_refused_naming_the_field(
        control_plane, policy, kind, case):
    template, says = REFUSED[case]
    refusal = create(control_plane, policy["namespace"], manifest(kind, "bad", template))
    assert refusal is not None, f"a {kind} with {case} was admitted"
    assert says in refusal, refusal


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ADMITTED)
def test_a_template_on_gvisor_is_admitted(control_plane, policy, kind, case):
    name = f"ok-{abs(hash(case)) % 10**6}"
    refusal = create(control_plane, policy["namespace"], manifest(kind, name, ADMITTED[case]))
    assert refusal is None, refusal


def test_every_example_is_admitted(control_plane, policy):
    found = 0
    for path in EXAMPLE_FILES:
        for doc in kube.load_documents(path):
            if doc.get("kind") in KINDS:
                found += 1
                doc["metadata"].pop("namespace", None)
                refusal = create(control_plane, policy["namespace"], json.dumps(doc),
                                 "--dry-run=server")
                assert refusal is None, f"{path}: {refusal}"
    assert found >= 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_pod_spec_is_judged_and_an_unchanged_one_is_not(control_plane, policy, kind):
    """An object admitted before the policy keeps working (labels, finalizers, deletion), but
    its pod spec cannot be changed into, or kept at, something refused."""
    plane, namespace, name = control_plane, policy["namespace"], policy[kind]

    def patch(body: dict[str, Any]) -> str | None:
        done = plane.kubectl("patch", RESOURCES[kind], name, "-n", namespace,
                             "--type=merge", "-p", json.dumps(body), check=False)
        return None if done.returncode == 0 else done.stderr

    assert patch({"metadata": {"labels": {"team": "a"}}}) is None
    refusal = patch({"spec": {"podTemplate": {"spec": {"runtimeClassName": "runc"}}}})
    assert refusal is not None and "runtimeClassName" in refusal, refusal
    assert patch({"spec": {"podTemplate": {"spec": {"hostNetwork": False}}}}) is None
    refusal = patch({"spec": {"podTemplate": {"spec": {"hostNetwork": True}}}})
    assert refusal is not None and "hostNetwork" in refusal, refusal


@pytest.mark.parametrize("given", [None, ""], ids=["absent", "empty"])
def test_pods_from_a_template_silent_on_the_runtime_class_are_created_under_gvisor(
        control_plane, crds, namespace, given):
    """The hooks' pod is admitted and reads back with the class we sent (the field reads back
    identically, so Metacontroller's 3-way merge sees no change to make)."""
    parent = resource("Sandbox", "silent", {"podTemplate": pod_template(runtimeClassName=given)})
    first = sandbox.sync(sync_request(parent), now=NOW)
    answer = sandbox.sync(sync_request(parent, [owned(c, parent) for c in first["children"]]),
                          now=NOW)
    (pod,) = [c for c in answer["children"] if c["kind"] == "Pod"]
    pod["metadata"]["namespace"] = namespace
    refusal = create(control_plane, namespace, json.dumps(pod))
    assert refusal is None, refusal
    made = json.loads(control_plane.kubectl("get", "pod", "silent", "-n", namespace,
                                            "-o", "json").stdout)
    assert made["spec"]["runtimeClassName"] == pod["spec"]["runtimeClassName"] == "gvisor"
