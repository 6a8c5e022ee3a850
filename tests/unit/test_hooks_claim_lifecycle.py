"""A live claim's lifecycle edits reach its Sandbox: shutdownTime moves with the claim's, the
policy is read on every sync, and a retained claim says its pod is stopping until its Sandbox
reports that it has expired too.

Replayed on tests/metacontroller_sim.py for speed (a clock the test moves); the same stories
run on the real loop in tests/metacontroller/test_claim_lifecycle.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hooks import objects, sandboxclaim
from hooks.objects import SANDBOX_LABEL
from testbed import hookrequests as hr
from tests.metacontroller_sim import Cluster
from tests.unit.test_hooks_scenarios import claim, pool, ready_reason, template

START = datetime(2026, 1, 1, tzinfo=UTC)
AT_1_MIN, AT_10_MIN = "2026-01-01T00:01:00Z", "2026-01-01T00:10:00Z"


def seeded() -> Cluster:
    cluster = Cluster(now=START)
    cluster.create(template())
    cluster.create(pool(1))
    cluster.settle()
    return cluster


def sandbox_deadline(cluster: Cluster, name: str) -> str | None:
    return cluster.get("Sandbox", name)["spec"].get("shutdownTime")


def serving_pods(cluster: Cluster, name: str) -> list[dict]:
    return [p for p in cluster.list("Pod") if objects.labels_of(p).get(SANDBOX_LABEL) == name]


def test_extending_a_live_claims_shutdown_time_extends_its_sandbox():
    cluster = seeded()
    cluster.create(claim("c", lifecycle={"shutdownTime": AT_1_MIN}))
    cluster.settle()
    assert sandbox_deadline(cluster, "c") == AT_1_MIN

    cluster.update_spec("SandboxClaim", "c", claim("c", lifecycle={"shutdownTime": AT_10_MIN})[
        "spec"])
    cluster.settle()
    assert sandbox_deadline(cluster, "c") == AT_10_MIN

    cluster.advance(120)  # past the first deadline, before the second
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("True", objects.SANDBOX_READY)
    assert ready_reason(cluster.get("SandboxClaim", "c")) == ("True", objects.SANDBOX_READY)


def test_removing_a_live_claims_lifecycle_removes_its_sandboxs_deadline():
    cluster = seeded()
    cluster.create(claim("c", lifecycle={"shutdownTime": AT_1_MIN}))
    cluster.settle()
    cluster.update_spec("SandboxClaim", "c", claim("c")["spec"])
    cluster.settle()
    assert sandbox_deadline(cluster, "c") is None
    cluster.advance(120)
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("True", objects.SANDBOX_READY)


def test_a_lifecycle_added_to_a_live_retained_claim_stops_its_pod():
    """The claim and its Sandbox expire together: the claim never outlives its pod's story."""
    cluster = seeded()
    cluster.create(claim("c"))
    cluster.settle()
    assert serving_pods(cluster, "c")

    cluster.update_spec("SandboxClaim", "c", claim(
        "c", lifecycle={"shutdownTime": AT_1_MIN, "shutdownPolicy": "Retain"})["spec"])
    cluster.settle()
    cluster.advance(120)
    cluster.settle()
    assert ready_reason(cluster.get("Sandbox", "c")) == ("False", objects.SANDBOX_EXPIRED)
    assert serving_pods(cluster, "c") == []
    claim_status = cluster.get("SandboxClaim", "c")["status"]
    assert ready_reason(cluster.get("SandboxClaim", "c")) == ("False", objects.EXPIRED)
    assert "has expired too" in claim_status["conditions"][0]["message"]


def test_changing_an_expired_claims_policy_from_retain_to_delete_deletes_its_sandbox():
    cluster = seeded()
    cluster.create(claim("c", lifecycle={"shutdownTime": AT_1_MIN, "shutdownPolicy": "Retain"}))
    cluster.settle()
    cluster.advance(120)
    cluster.settle()
    assert cluster.get("Sandbox", "c") is not None

    cluster.update_spec("SandboxClaim", "c", claim(
        "c", lifecycle={"shutdownTime": AT_1_MIN, "shutdownPolicy": "Delete"})["spec"])
    cluster.settle()
    assert cluster.get("Sandbox", "c") is None


def expired_retained_request(sandbox_reason: str) -> dict:
    parent = hr.resource("SandboxClaim", "c", {
        "sandboxTemplateRef": {"name": "python-runtime-template"},
        "lifecycle": {"shutdownTime": AT_1_MIN, "shutdownPolicy": "Retain"}})
    made = sandboxclaim.desired_sandbox(
        parent, hr.resource("SandboxTemplate", "python-runtime-template",
                            {"podTemplate": hr.SEED_POD_TEMPLATE}), None)
    made["spec"].pop("shutdownTime")  # made before the claim had a lifecycle
    child = hr.owned(made, parent)
    child["status"] = {"conditions": [{"type": "Ready", "status": "False",
                                       "reason": sandbox_reason, "message": "m"}]}
    return {"controller": {}, "parent": parent, "children": hr.group([child]), "related": {}}


def test_a_retained_claim_says_its_pod_is_stopping_until_its_sandbox_has_expired():
    later = datetime(2026, 1, 1, 0, 2, tzinfo=UTC)
    running = sandboxclaim.sync(expired_retained_request(objects.SANDBOX_READY), now=later)
    (kept,) = running["children"]
    assert kept["spec"]["shutdownTime"] == AT_1_MIN, "the Sandbox must expire too"
    message = running["status"]["conditions"][0]["message"]
    assert "is stopping its pod" in message and "stopped" not in message

    expired = sandboxclaim.sync(expired_retained_request(objects.SANDBOX_EXPIRED), now=later)
    assert "has expired too: its pod is deleted" in expired["status"]["conditions"][0]["message"]
