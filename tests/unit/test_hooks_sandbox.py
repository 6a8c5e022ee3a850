"""Sandbox sync hook: children, status, expiry, warm pods, bad specs, determinism."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hooks import objects, sandbox
from hooks.typedefs import DEFAULT_SETTINGS
from testbed.hookrequests import owned, with_pod_status
from testbed.hookrequests import sandbox as make_sandbox
from tests.unit.fenced import sync_request

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
UID = "uid-sandbox-my-sandbox"  # what testbed.hookrequests gives Sandbox my-sandbox
POLICY = "NetworkPolicy/my-sandbox-sandbox"  # its own (no claim controls it)


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
    assert set(got) == {"Pod/my-sandbox", "Service/my-sandbox", POLICY}
    service = got["Service/my-sandbox"]
    assert service["spec"]["clusterIP"] == "None"
    # By uid: a Sandbox deleted and made again under this name is another uid.
    assert service["spec"]["selector"] == {objects.SANDBOX_UID_LABEL: UID}
    labels = got["Pod/my-sandbox"]["metadata"]["labels"]
    assert labels[objects.SANDBOX_LABEL] == "my-sandbox"
    assert labels[objects.SANDBOX_UID_LABEL] == UID
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
    assert pod["metadata"]["labels"] == {
        "team": "a",
        objects.SANDBOX_LABEL: "my-sandbox",
        objects.SANDBOX_UID_LABEL: UID,
    }
    assert pod["metadata"]["annotations"] == {"note": "kept"}


RESTRICTED_POD = {
    "automountServiceAccountToken": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_pod_gets_the_restricted_defaults_where_the_template_is_silent():
    parent = make_sandbox()
    parent["spec"]["podTemplate"]["spec"]["initContainers"] = [{"name": "init", "image": "x"}]
    spec = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]["spec"]
    assert {k: spec[k] for k in RESTRICTED_POD} == RESTRICTED_POD
    for container in spec["initContainers"] + spec["containers"]:
        assert container["securityContext"] == RESTRICTED_CONTAINER
    assert spec["runtimeClassName"] == "gvisor"


def test_an_explicit_choice_in_the_template_is_kept():
    parent = make_sandbox()
    pod_spec = parent["spec"]["podTemplate"]["spec"]
    pod_spec["automountServiceAccountToken"] = True
    pod_spec["securityContext"] = {"runAsUser": 0, "seccompProfile": {"type": "Unconfined"}}
    pod_spec["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
    }
    spec = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    # Asked for root: gets root, not runAsNonRoot (which would stop the container).
    assert spec["securityContext"] == {
        "runAsUser": 0,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "Unconfined"},
    }
    assert spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
    }


def test_defaults_the_api_server_would_refuse_are_left_out():
    parent = make_sandbox()
    pod_spec = parent["spec"]["podTemplate"]["spec"]
    pod_spec["containers"][0]["securityContext"] = {"privileged": True}
    pod_spec["containers"].append(
        {"name": "admin", "image": "x", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
    )
    spec = kinds(sandbox.sync(sync_request(parent), now=NOW))["Pod/my-sandbox"]["spec"]
    for container in spec["containers"]:
        assert "allowPrivilegeEscalation" not in container["securityContext"]
    windows = make_sandbox()
    windows["spec"]["podTemplate"]["spec"]["os"] = {"name": "windows"}
    spec = kinds(sandbox.sync(sync_request(windows), now=NOW))["Pod/my-sandbox"]["spec"]
    assert "securityContext" not in spec, "Linux-only fields are refused on Windows pods"
    assert spec["automountServiceAccountToken"] is False


def test_volume_claim_templates_become_pvcs_mounted_as_volumes():
    vct = {
        "metadata": {"name": "workspace", "labels": {"tier": "fast"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    parent = make_sandbox(volumeClaimTemplates=[vct])
    parent["spec"]["podTemplate"]["spec"]["volumes"] = [{"name": "workspace", "emptyDir": {}}]
    first = sandbox.sync(sync_request(parent), now=NOW)
    assert set(kinds(first)) == {"PersistentVolumeClaim/workspace-my-sandbox",
                                 "Service/my-sandbox", POLICY}, "the pod waits for its own PVC"
    got = kinds(sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW))
    pvc = got["PersistentVolumeClaim/workspace-my-sandbox"]
    assert pvc["spec"] == vct["spec"]
    assert pvc["metadata"]["labels"] == {
        "tier": "fast",
        objects.SANDBOX_LABEL: "my-sandbox",
        objects.SANDBOX_UID_LABEL: UID,
    }
    assert got["Pod/my-sandbox"]["spec"]["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-my-sandbox"}}
    ]


def test_replicas_zero_keeps_service_and_pvcs_and_drops_the_pod():
    vct = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    parent = make_sandbox(volumeClaimTemplates=[vct])
    first = sandbox.sync(sync_request(parent), now=NOW)
    parent["spec"]["replicas"] = 0
    got = sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW)
    assert set(kinds(got)) == {"Service/my-sandbox", "PersistentVolumeClaim/data-my-sandbox",
                               POLICY}
    assert got["status"]["replicas"] == 0
    assert ready(got)["reason"] == objects.SCALED_TO_ZERO


def test_future_shutdown_time_asks_for_a_resync_then():
    parent = make_sandbox(shutdownTime="2026-01-01T01:00:00Z")
    first = sandbox.sync(sync_request(parent), now=NOW)
    got = sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW)
    assert got["resyncAfterSeconds"] == 50 * 60
    assert "Pod/my-sandbox" in kinds(got)


def test_past_shutdown_time_drops_pod_and_service_but_keeps_pvcs():
    vct = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    parent = make_sandbox(volumeClaimTemplates=[vct], shutdownTime="2026-01-01T00:05:00Z")
    first = sandbox.sync(sync_request(parent), now=NOW)
    got = sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW)
    assert set(kinds(got)) == {"PersistentVolumeClaim/data-my-sandbox", POLICY}
    assert ready(got)["status"] == "False"
    assert ready(got)["reason"] == objects.SANDBOX_EXPIRED
    assert "resyncAfterSeconds" not in got


def test_status_reports_the_observed_pod():
    parent = make_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    assert ready(first)["status"] == "False"
    settings = {**DEFAULT_SETTINGS, "cluster_domain": "corp.example",
                "warm_pod_grace_seconds": 5.0}
    got = sandbox.sync(
        sync_request(parent, applied(parent, first, pod_ready=True)), now=NOW, settings=settings
    )
    assert got["status"] | {"conditions": None} == {
        "replicas": 1,
        "selector": f"agents.x-k8s.io/sandbox-uid={UID}",
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


def warm_pod(
    name: str,
    pool: str = "pool",
    *,
    bound_to: str | None = None,
    uid: str | None = None,
    ready_: bool = True,
    deleting: bool = False,
):
    """A pool pod as related: free, or bound to Sandbox `bound_to` (of uid `uid`, by default
    the uid testbed.hookrequests gives a Sandbox of that name)."""
    pool_owner = {
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
        "kind": "SandboxWarmPool",
        "metadata": {"name": pool, "uid": f"uid-pool-{pool}", "namespace": "default"},
    }
    labels = {objects.POOL_LABEL: pool}
    if bound_to:
        labels[objects.SANDBOX_LABEL] = bound_to
        labels[objects.SANDBOX_UID_LABEL] = uid or f"uid-sandbox-{bound_to}"
    pod = owned(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
        },
        pool_owner,
    )
    pod = with_pod_status(pod, ready=ready_, ip="10.0.0.9")
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:09:59Z"
    return pod


def pool_sandbox(created: str = "2026-01-01T00:09:58Z", **kwargs) -> dict:
    return make_sandbox(labels={objects.POOL_LABEL: "pool"}, created=created, **kwargs)


def reported(parent: dict, pod_name: str) -> dict:
    """The Sandbox after an earlier answer named `pod_name` in its status."""
    parent["status"] = {"podName": pod_name, "replicas": 1, "podIPs": ["10.0.0.9"]}
    return parent


def test_a_bound_warm_pod_serves_the_sandbox_without_a_pod_of_its_own():
    parent = pool_sandbox()
    related = [warm_pod("pool-abcde", bound_to="my-sandbox"), warm_pod("pool-fghij")]
    got = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert set(kinds(got)) == {"Service/my-sandbox", POLICY}
    assert got["status"]["podName"] == "pool-abcde"
    assert got["status"]["podIPs"] == ["10.0.0.9"]
    assert ready(got)["status"] == "True"


def test_a_pod_bound_to_an_earlier_sandbox_of_the_same_name_is_never_served():
    """Delete my-sandbox, make it again: the new one (another uid) must not pick up the pod
    that served the old one, though that pod still carries the name."""
    parent = pool_sandbox()
    old = warm_pod("pool-abcde", bound_to="my-sandbox", uid="uid-of-the-previous-tenant")
    got = sandbox.sync(sync_request(parent, related=[old, warm_pod("pool-fghij")]), now=NOW)
    assert got["status"].get("podName") is None
    assert "10.0.0.9" not in got["status"]["podIPs"]
    assert ready(got)["reason"] == objects.WAITING_FOR_WARM_POD


def test_offers_itself_to_the_pool_for_the_grace_then_goes_cold():
    """It needs no sight of its pool's free pods (the pool makes one for it when none is free),
    so it offers itself for the grace whatever the pool holds, then starts its own."""
    young = pool_sandbox(created="2026-01-01T00:09:58Z")
    service = applied(young, sandbox.sync(sync_request(young), now=NOW))
    for related in ([], [warm_pod("pool-x", bound_to="other"), warm_pod("pool-y")]):
        got = sandbox.sync(sync_request(young, service, related), now=NOW)
        assert set(kinds(got)) == {"Service/my-sandbox", POLICY}
        assert ready(got)["reason"] == objects.WAITING_FOR_WARM_POD
        assert got["resyncAfterSeconds"] == DEFAULT_SETTINGS["warm_pod_grace_seconds"] - 2
    old = pool_sandbox(created="2026-01-01T00:09:00Z")
    cold = sandbox.sync(sync_request(old), now=NOW)
    assert "Pod/my-sandbox" in kinds(cold)
    assert ready(cold)["reason"] == objects.POD_NOT_READY


def test_once_it_started_its_own_pod_it_never_offers_itself_again():
    """A binding landing after that would leave it two pods."""
    young = pool_sandbox(created="2026-01-01T00:09:59Z")
    young["status"] = {"conditions": [{"type": "Ready", "status": "False",
                                       "reason": objects.POD_NOT_READY, "message": "",
                                       "lastTransitionTime": "2026-01-01T00:09:59Z"}]}
    again = sandbox.sync(sync_request(young, related=[warm_pod("pool-z")]), now=NOW)
    assert "Pod/my-sandbox" in kinds(again)
    assert ready(again)["reason"] == objects.POD_NOT_READY


def test_own_pod_wins_over_a_late_warm_binding_when_nothing_was_reported():
    parent = pool_sandbox(created="2026-01-01T00:09:00Z")  # past the grace: it goes cold
    first = sandbox.sync(sync_request(parent), now=NOW)
    children = applied(parent, first, pod_ready=True)
    got = sandbox.sync(
        sync_request(parent, children, [warm_pod("p-1", bound_to="my-sandbox")]), now=NOW
    )
    assert "Pod/my-sandbox" in kinds(got)
    assert got["status"]["podName"] == "my-sandbox"


def test_a_reported_warm_pod_is_kept_even_when_an_own_pod_appears():
    """It said p-1 before: it keeps p-1 and lets its own pod (made before it knew) go."""
    parent = reported(pool_sandbox(), "p-1")
    own = applied(parent, {"children": [sandbox.desired_pod(parent)]}, pod_ready=True)
    got = sandbox.sync(
        sync_request(parent, own, [warm_pod("p-1", bound_to="my-sandbox")]), now=NOW
    )
    assert "Pod/my-sandbox" not in kinds(got)
    assert got["status"]["podName"] == "p-1"
    assert ready(got)["status"] == "True"


def test_a_sandbox_whose_pod_goes_reports_pod_lost_and_takes_no_other():
    parent = reported(pool_sandbox(), "p-1")
    free = warm_pod("p-2")
    for related in ([free], [free, warm_pod("p-1", bound_to="my-sandbox", deleting=True)]):
        got = sandbox.sync(sync_request(parent, related=related), now=NOW)
        assert set(kinds(got)) == {"Service/my-sandbox", POLICY}, "no cold pod, no other warm pod"
        assert (ready(got)["status"], ready(got)["reason"]) == ("False", objects.POD_LOST)
        assert "p-1" in ready(got)["message"]
        assert got["status"]["podName"] == "p-1", "the name stays: it is what was lost"
        assert got["status"]["podIPs"] == []
    # Its own pod, deleted by someone: not made again under the same name either.
    cold = reported(make_sandbox(), "my-sandbox")
    got = sandbox.sync(sync_request(cold), now=NOW)
    assert "Pod/my-sandbox" not in kinds(got)
    assert ready(got)["reason"] == objects.POD_LOST
    # Scaling to 0 and back is how it gets a fresh pod.
    cold["spec"]["replicas"] = 0
    zero = sandbox.sync(sync_request(cold), now=NOW)
    assert "podName" not in zero["status"]
    cold["status"], cold["spec"]["replicas"] = zero["status"], 1
    assert "Pod/my-sandbox" in kinds(sandbox.sync(sync_request(cold), now=NOW))


def test_never_ready_on_a_terminating_pod():
    parent = pool_sandbox()
    got = sandbox.sync(
        sync_request(parent, related=[warm_pod("p-1", bound_to="my-sandbox", deleting=True)]),
        now=NOW,
    )
    assert ready(got)["status"] == "False"
    assert got["status"].get("podName") != "p-1"


def test_a_claims_sandbox_is_ready_only_once_the_claim_named_its_pod():
    claim_owner = {
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
        "kind": "SandboxClaim",
        "metadata": {"name": "my-sandbox", "uid": "uid-claim", "namespace": "default"},
    }
    parent = owned(pool_sandbox(), claim_owner)
    parent["metadata"]["uid"] = UID
    related = [warm_pod("p-1", bound_to="my-sandbox")]
    got = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert ready(got)["status"] == "False"
    # Its first answer says it is looking, like one that found nothing yet: the claim sees
    # the pod itself and names it (before issue 15: WaitingForAnnotation with podName, a write
    # more on the usual path).
    assert ready(got)["reason"] == objects.WAITING_FOR_WARM_POD
    assert "podName" not in got["status"]
    parent["metadata"]["annotations"][objects.POD_NAME_ANNOTATION] = "p-1"
    got = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert (ready(got)["status"], ready(got)["reason"]) == ("True", objects.SANDBOX_READY)


def claims_pool_sandbox() -> dict:
    claim_owner = {
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
        "kind": "SandboxClaim",
        "metadata": {"name": "my-sandbox", "uid": "uid-claim", "namespace": "default"},
    }
    parent = owned(pool_sandbox(), claim_owner, created="2026-01-01T00:09:58Z")
    parent["metadata"]["uid"] = UID
    return parent


def test_a_claims_sandbox_that_finds_its_pod_says_nothing_new_until_the_claim_names_it():
    """Issue 15: one status write fewer per claim. Its first answer offers it to its pool;
    when the pool has bound a pod, the status stays exactly that (no write) until the claim
    names the pod in the annotation; then one write names the pod and says Ready."""
    parent = claims_pool_sandbox()
    looking = sandbox.sync(sync_request(parent), now=NOW)
    assert ready(looking)["reason"] == objects.WAITING_FOR_WARM_POD
    parent["status"] = json.loads(json.dumps(looking["status"]))
    related = [warm_pod("p-1", bound_to="my-sandbox")]
    found = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert found["status"] == looking["status"], "the same status: Metacontroller writes none"
    assert "podName" not in found["status"]
    assert found["children"] == looking["children"]
    parent["metadata"].setdefault("annotations", {})[objects.POD_NAME_ANNOTATION] = "p-1"
    named = sandbox.sync(sync_request(parent, related=related), now=NOW)
    assert (ready(named)["status"], named["status"]["podName"]) == ("True", "p-1")


def test_a_first_answer_repeated_from_a_stale_read_is_the_same_status():
    """Metacontroller may sync a Sandbox from a copy read before its first status write
    landed: that answer, seconds later and after its pool bound a pod, must be the status
    already written (Ready=False since the Sandbox was made), or it is one more write."""
    parent = claims_pool_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    later = sandbox.sync(sync_request(parent, related=[warm_pod("p-1", bound_to="my-sandbox")]),
                         now=NOW + timedelta(seconds=3))
    assert later["status"] == first["status"]
    assert ready(first)["lastTransitionTime"] == parent["metadata"]["creationTimestamp"]


def test_a_sandbox_whose_annotation_names_another_pod_reports_its_own_choice():
    """The hold is only for a pod not named yet: an annotation naming another pod (stale, or
    written by someone else) gets WaitingForAnnotation with the Sandbox's own choice, which
    its claim copies."""
    parent = claims_pool_sandbox()
    parent["status"] = sandbox.sync(sync_request(parent), now=NOW)["status"]
    parent["metadata"].setdefault("annotations", {})[objects.POD_NAME_ANNOTATION] = "p-2"
    got = sandbox.sync(sync_request(parent, related=[warm_pod("p-1", bound_to="my-sandbox")]),
                       now=NOW)
    assert (ready(got)["reason"], got["status"]["podName"]) == (
        objects.WAITING_FOR_ANNOTATION, "p-1")


def test_customize_relates_only_pods_bound_to_its_uid_and_nothing_by_name():
    """Never all of its pool's pods (each of their changes would re-sync every Sandbox of the
    pool), and nothing by name: Metacontroller lists the whole namespace for a rule by name on
    every sync and matches every Sandbox's rules on every event of that kind (issue 15)."""
    assert sandbox.customize({"controller": {}, "parent": make_sandbox()}) == {
        "relatedResources": []
    }
    vct = {"metadata": {"name": "data"}, "spec": {}}
    parent = make_sandbox(labels={objects.POOL_LABEL: "pool"}, volumeClaimTemplates=[vct])
    assert sandbox.customize({"controller": {}, "parent": parent})["relatedResources"] == [
        {
            "apiVersion": "v1",
            "resource": "pods",
            "namespace": "default",
            "labelSelector": {"matchLabels": {objects.SANDBOX_UID_LABEL: UID}},
        },
    ]


def test_a_child_not_observed_yet_is_asked_about_again_at_the_sandboxs_age():
    """An earlier Sandbox's pod of our name, still terminating, makes Metacontroller's create
    fail quietly, and no related rule re-syncs us when it goes: the answer asks to be synced
    again while a child it wants is missing (its age, 1 to 30 s), and not once all are there."""
    vct = {"metadata": {"name": "data"}, "spec": {}}
    parent = make_sandbox(volumeClaimTemplates=[vct])
    created = objects.parse_time(parent["metadata"]["creationTimestamp"])
    first = sandbox.sync(sync_request(parent), now=created)
    assert first["resyncAfterSeconds"] == 1.0
    later = sandbox.sync(sync_request(parent), now=created + timedelta(seconds=7))
    assert later["resyncAfterSeconds"] == 7.0
    assert sandbox.sync(sync_request(parent), now=NOW)["resyncAfterSeconds"] == 30.0
    # The pod comes once its PVC is observed (it never mounts a PVC it does not own).
    second = sandbox.sync(sync_request(parent, applied(parent, first)), now=NOW)
    children = applied(parent, second, pod_ready=True)
    without_pod = [c for c in children if c["kind"] != "Pod"]
    assert sandbox.sync(sync_request(parent, without_pod), now=NOW)["resyncAfterSeconds"] == 30.0
    settled = sandbox.sync(sync_request(parent, children), now=NOW)
    assert "resyncAfterSeconds" not in settled


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
