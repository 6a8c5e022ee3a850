"""The router's ServiceAccount, with the RBAC it ships with, may write the two idle
annotations of a Sandbox and nothing else of it (manifests/router/admission.yaml;
docs/security.md, finding 36), on a real kube-apiserver.

RBAC has no verb narrower than `patch`: before the policy, the router's account could change a
Sandbox's spec (its pod template, replicas) in every namespace, which is pod-creation power.
"""

from __future__ import annotations

import json
import time

import pytest

from sandbox_common.contract import LAST_ACTIVITY_ANNOTATION, SANDBOX_API, WAKE_ANNOTATION
from testbed import kube
from testbed.hookrequests import SEED_POD_TEMPLATE

ROUTER = kube.REPO / "manifests" / "router"
ROUTER_USER = "system:serviceaccount:default:sandbox-router"


@pytest.fixture(scope="module")
def router_rules(control_plane, crds):
    """The router's ServiceAccount, RBAC and admission policy, as shipped."""
    for name in ("serviceaccount.yaml", "rbac.yaml", "admission.yaml"):
        control_plane.kubectl("apply", "--server-side", "--field-manager=tests",
                              "-f", str(ROUTER / name))
    return control_plane


def as_router(plane: kube.ControlPlane, namespace: str, patch: dict) -> str | None:
    """The router's merge patch of Sandbox `box`: None when admitted, else the refusal."""
    result = plane.kubectl(f"--as={ROUTER_USER}", "-n", namespace, "patch",
                           "sandboxes.agents.x-k8s.io", "box", "--type=merge",
                           "-p", json.dumps(patch), check=False)
    return None if result.returncode == 0 else result.stderr


REFUSED = {
    "spec.replicas": {"spec": {"replicas": 0}},
    "spec.podTemplate": {"spec": {"podTemplate": {"spec": {"hostNetwork": True}}}},
    "a label": {"metadata": {"labels": {"team": "router"}}},
    "another annotation": {"metadata": {"annotations": {"agents.x-k8s.io/pod-name": "x"}}},
    "an annotation removed": {"metadata": {"annotations": {"owner": None}}},
}


def test_the_router_may_write_only_the_idle_annotations(router_rules, namespace):
    plane = router_rules
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": SANDBOX_API, "kind": "Sandbox",
        "metadata": {"name": "box", "annotations": {"owner": "a"}},
        "spec": {"podTemplate": SEED_POD_TEMPLATE}}))
    # A policy is enforced once the API server has loaded it: a second or so.
    deadline = time.monotonic() + 15
    while as_router(plane, namespace, REFUSED["spec.replicas"]) is None:
        assert time.monotonic() < deadline, "the router changed a Sandbox's spec.replicas"
        plane.kubectl("patch", "sandboxes.agents.x-k8s.io", "box", "-n", namespace,
                      "--type=merge", "-p", '{"spec": {"replicas": 1}}')
        time.sleep(0.5)
    for case, patch in REFUSED.items():
        refusal = as_router(plane, namespace, patch)
        assert refusal is not None, f"the router could change {case}"
        assert "idle annotations" in refusal, refusal
    admitted = as_router(plane, namespace, {"metadata": {"annotations": {
        LAST_ACTIVITY_ANNOTATION: "2026-01-01T00:00:00Z", WAKE_ANNOTATION: "token"}}})
    assert admitted is None, admitted
    box = json.loads(plane.kubectl("get", "sandboxes.agents.x-k8s.io", "box", "-n", namespace,
                                   "-o", "json").stdout)
    assert box["metadata"]["annotations"][WAKE_ANNOTATION] == "token"
    assert box["spec"].get("replicas", 1) == 1
    # Anyone else is not concerned by this policy.
    plane.kubectl("patch", "sandboxes.agents.x-k8s.io", "box", "-n", namespace,
                  "--type=merge", "-p", '{"metadata": {"labels": {"team": "a"}}}')
