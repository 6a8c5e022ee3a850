"""Sandbox sync hook: children, status, expiry, warm pods, bad specs, determinism."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hooks import objects, sandbox
from tests.hookrequests import owned, sync_request, with_pod_status
from tests.hookrequests import sandbox as make_sandbox

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


def kinds(response: dict) -> dict[str, dict]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in response["children"]}


def ready(response: dict) -> dict:
    (cond,) = [c for c in response["status"]["conditions"] if c["type"] == "Ready"]
    return cond


def applied(parent: dict, response: dict, *, pod_ready: bool | None = None) -> list[dict]:
    """Children as Metacontroller would have created them from `response`."""
    out = []
    for child in response["children"]:
        obj = owned(child, parent)
        if child["kind"] == "Pod" and pod_ready is not None:
            obj = with_pod_status(obj, ready=pod_ready)
        out.append(obj)
    return out


def test_creates_pod_and_headless_service_named_like_the_sandbox():
    parent = make_sandbox("my-sandbox")
    got = kinds(sandbox.sync(sync_request(parent), now=NOW))
    assert set(got) == {"Pod/my-sandbox", "Service/my-sandbox"}
    service = got["Service/my-sandbox"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {objects.SANDBOX_LABEL: "my-sandbox"}
    assert got["Pod/my-sandbox"]["metadata"]["labels"][objects.SANDBOX_LABEL] == "my-sandbox"
    assert service["spec"]["ports"] == [
        {"name": "tcp-8888", "port": 8888, "targetPort": 8888, "protocol": "TCP"}
    ]


def test_pod_honours_template_labels_and_annotations_but_not_reserved_keys():
    parent = make_sandbox()
    parent["spec"]["podTemplate"]["metadata"] = {
        "labels": {
            "team": "a",
            objects.SANDBOX_LABEL: "someone-else",
            "controller-uid": "x",
            "extensions.agents.x-k8s.io/warm-pool": "evil",
        },
        "annotations": {"note": "kept", "agents.x-k8s.io/pod-name": "forged"},
    }
    pod = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]
    assert pod["metadata"]["labels"] == {"team": "a", objects.SANDBOX_LABEL: "my-sandbox"}
    assert pod["metadata"]["annotations"] == {"note": "kept"}


def test_pod_gets_secure_defaults_unless_the_template_says_otherwise():
    parent = make_sandbox()
    pod = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["runtimeClassName"] == "gvisor"

    parent["spec"]["podTemplate"]["spec"]["automountServiceAccountToken"] = True
    parent["spec"]["podTemplate"]["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": True
    }
    pod = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is True


def test_volume_claim_templates_become_pvcs_mounted_as_volumes():
    vct = {
        "metadata": {"name": "workspace", "labels": {"tier": "fast"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    parent = make_sandbox(volumeClaimTemplates=[vct])
    parent["spec"]["podTemplate"]["spec"]["volumes"] = [{"name": "workspace", "emptyDir": {}}]
    got = kinds(sandbox.sync(sync_request(parent), now=NOW))
    pvc = got["PersistentVolumeClaim/workspace-my-sandbox"]
    assert pvc["spec"] == vct["spec"]
    assert pvc["metadata"]["labels"] == {"tier": "fast", objects.SANDBOX_LABEL: "my-sandbox"}
    assert got["Pod/my-sandbox"]["spec"]["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-my-sandbox"}}
    ]


def test_replicas_zero_keeps_service_and_pvcs_and_drops_the_pod():
    vct = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    parent = make_sandbox(volumeClaimTemplates=[vct])
    first = sandbox.sync(sync_request(parent), now=NOW)
    parent["spec"]["replicas"] = 0
    got = sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW)
    assert set(kinds(got)) == {"Service/my-sandbox", "PersistentVolumeClaim/data-my-sandbox"}
    assert got["status"]["replicas"] == 0
    assert ready(got)["reason"] == objects.SCALED_TO_ZERO


def test_future_shutdown_time_asks_for_a_resync_then():
    parent = make_sandbox(shutdownTime="2026-01-01T01:00:00Z")
    got = sandbox.sync(sync_request(parent), now=NOW)
    assert got["resyncAfterSeconds"] == 50 * 60
    assert "Pod/my-sandbox" in kinds(got)


def test_past_shutdown_time_drops_pod_and_service_but_keeps_pvcs():
    vct = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    parent = make_sandbox(volumeClaimTemplates=[vct], shutdownTime="2026-01-01T00:05:00Z")
    got = sandbox.sync(sync_request(parent), now=NOW)
    assert set(kinds(got)) == {"PersistentVolumeClaim/data-my-sandbox"}
    assert ready(got)["status"] == "False"
    assert ready(got)["reason"] == objects.SANDBOX_EXPIRED
    assert "resyncAfterSeconds" not in got


def test_status_reports_the_observed_pod():
    parent = make_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    assert ready(first)["status"] == "False"
    settings = {"cluster_domain": "corp.example", "warm_pod_grace_seconds": 5.0}
    got = sandbox.sync(
        sync_request(parent, applied(parent, first, pod_ready=True)), now=NOW, settings=settings
    )
    assert got["status"] | {"conditions": None} == {
        "replicas": 1,
        "selector": "agents.x-k8s.io/sandbox=my-sandbox",
        "podIPs": ["10.0.0.7"],
        "podName": "my-sandbox",
        "service": "my-sandbox",
        "serviceFQDN": "my-sandbox.default.svc.corp.example",
        "conditions": None,
    }
    assert ready(got)["status"] == "True"
    assert ready(got)["reason"] == objects.SANDBOX_READY


def test_invalid_spec_keeps_every_observed_child_and_names_the_field():
    parent = make_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    children = applied(parent, first, pod_ready=True)
    parent["spec"]["replicas"] = 2
    got = sandbox.sync(sync_request(parent, children), now=NOW)
    assert sorted(json.dumps(c, sort_keys=True) for c in got["children"]) == sorted(
        json.dumps(c, sort_keys=True) for c in first["children"]
    )
    assert ready(got)["reason"] == objects.INVALID_SPEC
    assert "spec.replicas" in ready(got)["message"]


def test_name_too_long_for_a_service_is_reported_not_acted_on():
    parent = make_sandbox("x" * 64)
    got = sandbox.sync(sync_request(parent), now=NOW)
    assert got["children"] == []
    assert ready(got)["reason"] == objects.INVALID_SPEC
    assert "metadata.name" in ready(got)["message"]


def test_same_request_gives_byte_identical_answers():
    parent = make_sandbox(shutdownTime="2026-01-01T01:00:00Z")
    request = sync_request(parent)
    first = json.dumps(sandbox.sync(request, now=NOW), sort_keys=True)
    second = json.dumps(sandbox.sync(request, now=NOW), sort_keys=True)
    assert first == second


def test_condition_transition_time_moves_only_when_status_flips():
    parent = make_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    parent["status"] = first["status"]
    later = NOW + timedelta(minutes=3)
    again = sandbox.sync(sync_request(parent, applied(parent, first, pod_ready=False)), now=later)
    assert ready(again)["lastTransitionTime"] == ready(first)["lastTransitionTime"]
    flipped = sandbox.sync(sync_request(parent, applied(parent, first, pod_ready=True)), now=later)
    assert ready(flipped)["lastTransitionTime"] == "2026-01-01T00:13:00Z"


def warm_pod(name: str, pool: str = "pool", *, bound_to: str | None = None, ready_: bool = True):
    pool_owner = {
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
        "kind": "SandboxWarmPool",
        "metadata": {"name": pool, "uid": f"uid-pool-{pool}", "namespace": "default"},
    }
    labels = {objects.POOL_LABEL: pool}
    if bound_to:
        labels[objects.SANDBOX_LABEL] = bound_to
    pod = owned(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
        },
        pool_owner,
    )
    return with_pod_status(pod, ready=ready_, ip="10.0.0.9")


def test_a_bound_warm_pod_serves_the_sandbox_without_a_pod_of_its_own():
    parent = make_sandbox(labels={objects.POOL_LABEL: "pool"})
    related = [warm_pod("pool-abcde", bound_to="my-sandbox"), warm_pod("pool-fghij")]
    got = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert set(kinds(got)) == {"Service/my-sandbox"}
    assert got["status"]["podName"] == "pool-abcde"
    assert got["status"]["podIPs"] == ["10.0.0.9"]
    assert ready(got)["status"] == "True"


def test_waits_for_a_free_warm_pod_within_the_grace_then_goes_cold():
    young = make_sandbox(labels={objects.POOL_LABEL: "pool"}, created="2026-01-01T00:09:58Z")
    related = [warm_pod("pool-fghij")]
    got = sandbox.sync(sync_request(young, related=related), now=NOW)
    assert set(kinds(got)) == {"Service/my-sandbox"}
    assert ready(got)["reason"] == objects.WAITING_FOR_WARM_POD
    assert got["resyncAfterSeconds"] == 3.0
    old = make_sandbox(labels={objects.POOL_LABEL: "pool"}, created="2026-01-01T00:09:00Z")
    assert "Pod/my-sandbox" in kinds(sandbox.sync(sync_request(old, related=related), now=NOW))


def test_no_free_warm_pod_means_a_cold_pod_at_once():
    young = make_sandbox(labels={objects.POOL_LABEL: "pool"}, created="2026-01-01T00:09:59Z")
    related = [warm_pod("pool-fghij", ready_=False), warm_pod("pool-x", bound_to="other")]
    got = sandbox.sync(sync_request(young, related=related), now=NOW)
    assert "Pod/my-sandbox" in kinds(got)


def test_own_pod_wins_over_a_late_warm_binding():
    parent = make_sandbox(labels={objects.POOL_LABEL: "pool"})
    first = sandbox.sync(sync_request(parent), now=NOW)
    children = applied(parent, first, pod_ready=True)
    got = sandbox.sync(
        sync_request(parent, children, [warm_pod("p-1", bound_to="my-sandbox")]), now=NOW
    )
    assert "Pod/my-sandbox" in kinds(got)
    assert got["status"]["podName"] == "my-sandbox"


def test_customize_asks_for_the_pool_pods_only_when_pool_served():
    assert sandbox.customize({"controller": {}, "parent": make_sandbox()}) == {
        "relatedResources": []
    }
    parent = make_sandbox(labels={objects.POOL_LABEL: "pool"})
    assert sandbox.customize({"controller": {}, "parent": parent})["relatedResources"] == [
        {
            "apiVersion": "v1",
            "resource": "pods",
            "namespace": "default",
            "labelSelector": {"matchLabels": {objects.POOL_LABEL: "pool"}},
        }
    ]


def test_pod_states_only_what_the_api_server_keeps():
    """The server drops zero probe counters; sending them would read as a change every sync."""
    parent = make_sandbox()
    probe = parent["spec"]["podTemplate"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["initialDelaySeconds"] == 0
    pod = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]
    kept = pod["spec"]["containers"][0]["readinessProbe"]
    assert "initialDelaySeconds" not in kept
    assert kept["periodSeconds"] == 1
    service = kinds(sandbox.sync(sync_request(parent), now=NOW))["Service/my-sandbox"]
    assert "publishNotReadyAddresses" not in service["spec"]
