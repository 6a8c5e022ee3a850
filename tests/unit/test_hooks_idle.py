"""Idle sandboxes in the hooks: suspend after idleTimeout, wake on the router's token, a fresh
pod after a wake (never the one from before the suspension), Suspended never True beside Ready.

Replayed on tests/metacontroller_sim.py (a clock the test moves, graceful pod deletion, stale
reads); the same story runs on the real loop in tests/metacontroller/test_idle.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from hooks import lifecycle, objects, sandbox
from testbed.hookrequests import owned, with_pod_status
from testbed.hookrequests import sandbox as make_sandbox
from tests.metacontroller_sim import Cluster
from tests.unit.fenced import sync_request
from tests.unit.test_hooks_scenarios import claim, pool, ready_reason, template

START = datetime(2026, 1, 1, tzinfo=UTC)


def condition(obj: dict, type_: str) -> dict | None:
    return lifecycle.find_condition(obj, type_)


def seeded(*, replicas: int = 1, idle: str | None = "60s") -> Cluster:
    cluster = Cluster(now=START)
    made = template()
    if idle:
        made["spec"]["idleTimeout"] = idle
    cluster.create(made)
    if replicas:
        cluster.create(pool(replicas))
    cluster.settle()
    return cluster


def annotate(cluster: Cluster, name: str, key: str, value: str) -> None:
    """What the router does: a merge patch of one annotation on the Sandbox."""
    obj = cluster.get("Sandbox", name)
    obj["metadata"].setdefault("annotations", {})[key] = value
    cluster.emit(obj, "MODIFIED")


def wake(cluster: Cluster, name: str) -> None:
    """The router's wake: the Suspended condition's lastTransitionTime as the token."""
    since = condition(cluster.get("Sandbox", name), objects.SUSPENDED)["lastTransitionTime"]
    annotate(cluster, name, objects.WAKE_ANNOTATION, since)


def serving(cluster: Cluster, name: str) -> list[dict]:
    uid = cluster.get("Sandbox", name)["metadata"]["uid"]
    return [p for p in cluster.list("Pod")
            if objects.labels_of(p).get(objects.SANDBOX_UID_LABEL) == uid
            and not objects.is_deleting(p)]


def never_ready_while_suspended(cluster: Cluster) -> None:
    for event in cluster.events:
        if event.kind == "Sandbox":
            ready = condition(event.obj, objects.READY) or {}
            suspended = condition(event.obj, objects.SUSPENDED) or {}
            assert not (ready.get("status") == "True" and suspended.get("status") == "True"), \
                event.obj["status"]


def test_the_template_gives_the_default_and_the_claim_overrides_it():
    cluster = seeded()
    cluster.create(claim("a"))
    cluster.create(claim("b", idleTimeout="15m"))
    cluster.settle()
    assert cluster.get("Sandbox", "a")["spec"]["idleTimeout"] == "60s"
    assert cluster.get("Sandbox", "b")["spec"]["idleTimeout"] == "15m"
    cluster.update_spec("SandboxClaim", "b", claim("b", idleTimeout="2h")["spec"])
    cluster.settle()
    assert cluster.get("Sandbox", "b")["spec"]["idleTimeout"] == "2h", "kept in step"


def test_an_idle_sandbox_suspends_keeps_service_and_name_and_wakes_on_a_fresh_warm_pod():
    cluster = seeded(replicas=2)
    cluster.create(claim("c"))
    cluster.settle()
    box = cluster.get("Sandbox", "c")
    assert ready_reason(box) == ("True", objects.SANDBOX_READY)
    assert condition(box, objects.SUSPENDED)["status"] == "False"
    (first,) = serving(cluster, "c")

    cluster.advance(59)
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c"))[0] == "True", "not idle long enough"

    cluster.advance(2)
    cluster.settle()
    box = cluster.get("Sandbox", "c")
    assert ready_reason(box) == ("False", objects.SUSPENDED)
    suspended = condition(box, objects.SUSPENDED)
    assert (suspended["status"], suspended["reason"]) == ("True", objects.IDLE)
    assert suspended["lastTransitionTime"] == objects.format_time(cluster.now)
    assert "podName" not in box["status"] and box["status"]["replicas"] == 0
    assert serving(cluster, "c") == [], "the warm pod is gone"
    assert cluster.get("Service", "c") is not None
    assert cluster.get("SandboxClaim", "c") is not None

    cluster.advance(300)  # asleep for a long time: nothing changes
    cluster.settle()
    assert condition(cluster.get("Sandbox", "c"), objects.SUSPENDED)["status"] == "True"

    wake(cluster, "c")
    cluster.settle()
    box = cluster.get("Sandbox", "c")
    assert ready_reason(box) == ("True", objects.SANDBOX_READY)
    resumed = condition(box, objects.SUSPENDED)
    assert (resumed["status"], resumed["reason"]) == ("False", objects.RESUMED)
    (second,) = serving(cluster, "c")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["metadata"]["name"].startswith("python-sandbox-warmpool-"), "taken warm"
    assert objects.labels_of(second)[objects.INCARNATION_LABEL] == lifecycle.incarnation(box)
    assert box["status"]["podName"] == second["metadata"]["name"]
    assert box["metadata"]["annotations"][objects.POD_NAME_ANNOTATION] == \
        second["metadata"]["name"], "the claim names the new pod"
    never_ready_while_suspended(cluster)

    # And again: the idle clock restarts at the resume.
    cluster.advance(61)
    cluster.settle()
    assert condition(cluster.get("Sandbox", "c"), objects.SUSPENDED)["status"] == "True"
    wake(cluster, "c")
    cluster.settle()
    (third,) = serving(cluster, "c")
    # A new pod (pool pod names are used again once free; uids never are).
    assert third["metadata"]["uid"] not in (first["metadata"]["uid"], second["metadata"]["uid"])
    never_ready_while_suspended(cluster)


def test_reported_activity_postpones_the_suspension():
    cluster = seeded()
    cluster.create(claim("c"))
    cluster.settle()
    cluster.advance(50)
    annotate(cluster, "c", objects.LAST_ACTIVITY_ANNOTATION, objects.format_time(cluster.now))
    cluster.settle()
    cluster.advance(50)  # 100 s after Ready, 50 s after the last request
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c"))[0] == "True"
    cluster.advance(11)
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("False", objects.SUSPENDED)


def test_the_hook_asks_to_be_called_back_when_the_sandbox_would_turn_idle():
    cluster = seeded(replicas=0)
    cluster.create(claim("c"))
    cluster.settle()
    cluster.advance(20)
    box = cluster.get("Sandbox", "c")
    children = [o for kind in ("Pod", "Service") for o in cluster.list(kind)
                if cluster.owner_uid(o) == box["metadata"]["uid"]]
    answer = sandbox.sync(sync_request(box, children), now=cluster.now)
    assert answer["resyncAfterSeconds"] == pytest.approx(40)


def test_the_answer_that_turns_it_ready_asks_to_be_called_back_at_its_idle_deadline():
    """Metacontroller does not re-sync a Sandbox for its own status write (ignoreStatusChanges),
    so the answer that turns it Ready must schedule the suspension itself: a Sandbox that
    never gets a request must still suspend after its idle timeout."""
    made = make_sandbox("s", idleTimeout="30s", created="2026-01-01T00:00:00Z")
    first = sandbox.sync(sync_request(made), now=START)
    (pod,) = [c for c in first["children"] if c["kind"] == "Pod"]
    ready_pod = with_pod_status(owned(pod, made), ready=True)
    service = [owned(c, made) for c in first["children"] if c["kind"] == "Service"]
    answer = sandbox.sync(sync_request(made, [ready_pod, *service]),
                          now=START + timedelta(seconds=5))
    assert ready_reason(answer) == ("True", objects.SANDBOX_READY)
    assert answer["resyncAfterSeconds"] == pytest.approx(30)


def test_activity_written_after_a_suspension_does_not_wake_it_only_the_token_does():
    cluster = seeded()
    cluster.create(claim("c"))
    cluster.settle()
    cluster.advance(61)
    cluster.settle()
    # A late activity report (a request that ended as the sandbox went to sleep) ...
    annotate(cluster, "c", objects.LAST_ACTIVITY_ANNOTATION, objects.format_time(cluster.now))
    # ... and a wake token of some earlier suspension change nothing.
    annotate(cluster, "c", objects.WAKE_ANNOTATION, "2025-12-31T00:00:00Z")
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("False", objects.SUSPENDED)
    assert serving(cluster, "c") == []
    wake(cluster, "c")
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("True", objects.SANDBOX_READY)


def test_a_sandbox_with_its_own_pod_suspends_and_wakes_on_a_new_pod_keeping_its_volume():
    cluster = seeded(replicas=0)
    vct = {"metadata": {"name": "workspace"},
           "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    made = make_sandbox("s", idleTimeout="30s", volumeClaimTemplates=[vct])
    del made["metadata"]["uid"]
    cluster.create(made)
    cluster.settle()
    (first,) = serving(cluster, "s")
    cluster.advance(31)
    cluster.settle()
    assert serving(cluster, "s") == []
    assert cluster.get("PersistentVolumeClaim", "workspace-s") is not None
    wake(cluster, "s")
    cluster.settle()
    (second,) = serving(cluster, "s")
    assert second["metadata"]["name"] == "s"
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert objects.INCARNATION_LABEL in objects.labels_of(second)
    volumes = {v["name"]: v for v in second["spec"]["volumes"]}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "workspace-s"
    assert ready_reason(cluster.get("Sandbox", "s")) == ("True", objects.SANDBOX_READY)
    never_ready_while_suspended(cluster)


def test_a_pod_from_before_the_suspension_is_never_taken_back():
    """The wake arrives while the pool has not yet deleted the pod it bound before the
    suspension: the Sandbox ignores it (another incarnation) and the pool deletes it."""
    cluster = seeded(replicas=2)
    cluster.create(claim("c"))
    cluster.settle()
    (first,) = serving(cluster, "c")
    cluster.advance(61)
    box = cluster.get("Sandbox", "c")
    # Only the Sandbox syncs: it reports Suspended; the pool has not seen it yet.
    from tests.metacontroller_sim import CONTROLLERS

    sandbox_controller = next(c for c in CONTROLLERS if c.parent == "Sandbox")
    cluster.sync(box, sandbox_controller)
    wake(cluster, "c")
    cluster.sync(cluster.get("Sandbox", "c"), sandbox_controller)
    box = cluster.get("Sandbox", "c")
    assert box["status"].get("podName") in (None, "")
    cluster.settle()
    box = cluster.get("Sandbox", "c")
    assert box["status"]["podName"] != first["metadata"]["name"]
    assert cluster.get("Pod", first["metadata"]["name"]) is None
    never_ready_while_suspended(cluster)


def test_removing_the_idle_timeout_wakes_it():
    cluster = seeded(replicas=0)
    made = make_sandbox("s", idleTimeout="30s")
    del made["metadata"]["uid"]
    cluster.create(made)
    cluster.settle()
    cluster.advance(31)
    cluster.settle()
    assert serving(cluster, "s") == []
    spec = copy.deepcopy(cluster.get("Sandbox", "s")["spec"])
    del spec["idleTimeout"]
    cluster.update_spec("Sandbox", "s", spec)
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "s")) == ("True", objects.SANDBOX_READY)
    assert condition(cluster.get("Sandbox", "s"), objects.SUSPENDED) is None


def test_a_sandbox_that_is_not_ready_is_not_idle():
    made = make_sandbox("s", idleTimeout="30s", created="2026-01-01T00:00:00Z")
    answer = sandbox.sync(sync_request(made), now=START + timedelta(hours=1))
    assert ready_reason(answer) == ("False", objects.POD_NOT_READY)
    assert condition(answer, objects.SUSPENDED)["status"] == "False"


def test_without_an_idle_timeout_nothing_changes():
    answer = sandbox.sync(sync_request(make_sandbox("s")), now=START)
    assert condition(answer, objects.SUSPENDED) is None


@pytest.mark.parametrize("value", ["0s", "1s", "abc", "1m30", "90", "", "1s1m", "9000h"])
def test_a_bad_idle_timeout_is_an_invalid_spec(value):
    answer = sandbox.sync(sync_request(make_sandbox("s", idleTimeout=value)), now=START)
    cond = condition(answer, objects.READY)
    assert cond["reason"] == objects.INVALID_SPEC
    assert "spec.idleTimeout" in cond["message"]


@pytest.mark.parametrize("value,seconds", [("2s", 2), ("90s", 90), ("15m", 900),
                                           ("1h30m", 5400), ("8760h", 8760 * 3600)])
def test_good_idle_timeouts(value, seconds):
    assert lifecycle.idle_timeout_seconds({"spec": {"idleTimeout": value}}) == seconds
    answer = sandbox.sync(sync_request(make_sandbox("s", idleTimeout=value)), now=START)
    assert condition(answer, objects.READY)["reason"] != objects.INVALID_SPEC
