"""Template, warm pool and claim hooks together, replayed as Metacontroller would apply them.

On tests/metacontroller_sim.py, for speed: the property test and the pool of a thousand are
only affordable here. Every story below also runs on a real Metacontroller in
tests/metacontroller/ (test_warm_pool_loop.py, test_claim_lifecycle.py, test_restarts.py).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hooks import lifecycle, objects
from hooks.objects import POOL_LABEL, SANDBOX_LABEL, SANDBOX_UID_LABEL
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.tenancy_rules import check, leftover_bound_pods
from tests.metacontroller_sim import Cluster

START = datetime(2026, 1, 1, tzinfo=UTC)
X = "extensions.agents.x-k8s.io/v1alpha1"


def template(name: str = "python-runtime-template", pod_template: dict | None = None) -> dict:
    return {
        "apiVersion": X,
        "kind": "SandboxTemplate",
        "metadata": {"name": name},
        "spec": {"podTemplate": copy.deepcopy(pod_template or SEED_POD_TEMPLATE)},
    }


def pool(
    replicas: int = 2,
    name: str = "python-sandbox-warmpool",
    template_name: str = "python-runtime-template",
) -> dict:
    return {
        "apiVersion": X,
        "kind": "SandboxWarmPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": template_name}},
    }


def claim(name: str, template_name: str = "python-runtime-template", **spec) -> dict:
    return {
        "apiVersion": X,
        "kind": "SandboxClaim",
        "metadata": {"name": name},
        "spec": {"sandboxTemplateRef": {"name": template_name}, **spec},
    }


def ready_reason(obj: dict) -> tuple[str, str]:
    cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["reason"]


def free_pods(cluster: Cluster) -> list[dict]:
    return [
        p
        for p in cluster.list("Pod")
        if POOL_LABEL in objects.labels_of(p) and not objects.is_bound(p)
        and not objects.is_deleting(p)
    ]


@pytest.fixture
def seeded() -> Cluster:
    cluster = Cluster(now=START)
    cluster.create(template())
    cluster.create(pool(2))
    cluster.settle()
    return cluster


def test_seed_walkthrough_warms_two_pods_and_fences_them(seeded: Cluster):
    assert len(free_pods(seeded)) == 2
    assert all(objects.pod_is_ready(p) for p in free_pods(seeded))
    status = seeded.get("SandboxWarmPool", "python-sandbox-warmpool")["status"]
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert ready_reason(seeded.get("SandboxWarmPool", "python-sandbox-warmpool")) == (
        "True",
        objects.POOL_READY,
    )
    (policy,) = seeded.list("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        objects.TEMPLATE_LABEL: "python-runtime-template"
    }
    pod = free_pods(seeded)[0]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["runtimeClassName"] == "gvisor"


def test_a_claim_is_served_by_a_warm_pod_at_once_and_the_pool_refills(seeded: Cluster):
    warm = {p["metadata"]["name"] for p in free_pods(seeded)}
    seeded.create(claim("my-claim"))
    seeded.settle()
    sandbox = seeded.get("Sandbox", "my-claim")
    assert sandbox is not None, "the claim's Sandbox is named exactly like the claim"
    assert sandbox["status"]["podName"] in warm
    assert seeded.get("Pod", "my-claim") is None, "no cold pod when a warm one was free"
    assert (
        sandbox["metadata"]["annotations"][objects.POD_NAME_ANNOTATION]
        == sandbox["status"]["podName"]
    )
    assert ready_reason(sandbox) == ("True", objects.SANDBOX_READY)
    claim_obj = seeded.get("SandboxClaim", "my-claim")
    assert ready_reason(claim_obj) == ("True", objects.SANDBOX_READY)
    assert claim_obj["status"]["sandbox"] == {
        "name": "my-claim",
        "podName": sandbox["status"]["podName"],
    }
    served = seeded.get("Pod", sandbox["status"]["podName"])
    uid = sandbox["metadata"]["uid"]
    assert objects.labels_of(served)[SANDBOX_LABEL] == "my-claim"
    assert objects.labels_of(served)[SANDBOX_UID_LABEL] == uid
    assert seeded.get("Service", "my-claim")["spec"]["selector"] == {SANDBOX_UID_LABEL: uid}
    assert len(free_pods(seeded)) == 2, "the pool refilled"
    assert check(seeded.events).count() == 0, check(seeded.events).summary()


def test_many_claims_at_once_never_share_a_pod(seeded: Cluster):
    for i in range(6):
        seeded.create(claim(f"c{i}"))
    seeded.settle()
    seeded.advance(10)  # past the warm-pod grace: the rest start cold pods
    seeded.settle()
    served = [seeded.get("Sandbox", f"c{i}")["status"]["podName"] for i in range(6)]
    assert len(set(served)) == 6
    warm_served = [name for name in served if not name.startswith("c")]
    assert len(warm_served) >= 2
    assert check(seeded.events).count() == 0, check(seeded.events).summary()
    assert all(ready_reason(seeded.get("SandboxClaim", f"c{i}"))[0] == "True" for i in range(6))


def test_an_empty_pool_makes_a_pod_for_the_claim_without_waiting():
    """No free pod: the pool makes one bound to the claim's Sandbox in its next answer, rather
    than leaving the Sandbox to start its own after the warm-pod grace."""
    cluster = Cluster(now=START)
    cluster.create(template())
    cluster.create(pool(0))
    cluster.settle()
    assert cluster.get("SandboxTemplate", "python-runtime-template")["status"]["warmPools"] == [
        "python-sandbox-warmpool"]
    cluster.create(claim("solo"))
    cluster.settle()  # no time passes: nothing waited for the grace
    sandbox = cluster.get("Sandbox", "solo")
    served = cluster.get("Pod", sandbox["status"]["podName"])
    assert objects.controller_of(served) == ("SandboxWarmPool", "python-sandbox-warmpool")
    assert objects.labels_of(served)[SANDBOX_UID_LABEL] == sandbox["metadata"]["uid"]
    assert cluster.get("Pod", "solo") is None
    assert ready_reason(cluster.get("SandboxClaim", "solo")) == ("True", objects.SANDBOX_READY)
    assert free_pods(cluster) == [], "replicas 0: it keeps no free pod"
    assert check(cluster.events).count() == 0, check(cluster.events).summary()


def test_claims_spread_over_the_pools_of_their_template():
    """Several pools of one template share its claims (by a hash of each claim's uid), so a
    burst is bound by several pools' syncs at once rather than one pool's, one pod at a time."""
    cluster = Cluster(now=START)
    cluster.create(template())
    for name in ("pool-a", "pool-b", "pool-c"):
        cluster.create(pool(4, name=name))
    cluster.settle()
    assert cluster.get("SandboxTemplate", "python-runtime-template")["status"]["warmPools"] == [
        "pool-a", "pool-b", "pool-c"]
    for i in range(12):
        cluster.create(claim(f"c{i}"))
    cluster.settle()
    chosen = [objects.labels_of(cluster.get("Sandbox", f"c{i}"))[POOL_LABEL] for i in range(12)]
    assert set(chosen) == {"pool-a", "pool-b", "pool-c"}
    for i, pool_name in enumerate(chosen):
        served = cluster.get("Pod", cluster.get("Sandbox", f"c{i}")["status"]["podName"])
        assert objects.controller_of(served) == ("SandboxWarmPool", pool_name)
    assert check(cluster.events).count() == 0, check(cluster.events).summary()


def test_scale_down_and_template_change_keep_pods_that_serve_sandboxes(seeded: Cluster):
    seeded.create(claim("keep-me"))
    seeded.settle()
    serving = seeded.get("Sandbox", "keep-me")["status"]["podName"]
    seeded.update_spec("SandboxWarmPool", "python-sandbox-warmpool", pool(0)["spec"])
    seeded.settle()
    assert seeded.get("Pod", serving) is not None
    assert free_pods(seeded) == []
    changed = copy.deepcopy(SEED_POD_TEMPLATE)
    changed["spec"]["containers"][0]["image"] = "runtime:v2"
    seeded.update_spec(
        "SandboxTemplate", "python-runtime-template", template(pod_template=changed)["spec"]
    )
    seeded.update_spec("SandboxWarmPool", "python-sandbox-warmpool", pool(1)["spec"])
    seeded.settle()
    assert seeded.get("Pod", serving) is not None
    (fresh,) = free_pods(seeded)
    assert fresh["spec"]["containers"][0]["image"] == "runtime:v2"


def test_deleting_the_claim_deletes_its_sandbox_and_the_pod_that_served_it(seeded: Cluster):
    seeded.create(claim("bye"))
    seeded.settle()
    serving = seeded.get("Sandbox", "bye")["status"]["podName"]
    seeded.delete("SandboxClaim", "bye")
    seeded.settle()
    assert seeded.get("Sandbox", "bye") is None
    assert seeded.get("Pod", serving) is None
    assert len(free_pods(seeded)) == 2


def test_pool_deletion_waits_for_bound_pods_to_be_released(seeded: Cluster):
    seeded.create(claim("holder"))
    seeded.settle()
    serving = seeded.get("Sandbox", "holder")["status"]["podName"]
    seeded.delete("SandboxWarmPool", "python-sandbox-warmpool")
    seeded.settle()
    assert seeded.get("SandboxWarmPool", "python-sandbox-warmpool") is not None
    assert free_pods(seeded) == []
    assert seeded.get("Pod", serving) is not None
    seeded.delete("SandboxClaim", "holder")
    seeded.settle()
    assert seeded.get("SandboxWarmPool", "python-sandbox-warmpool") is None
    assert seeded.list("Pod") == []


def test_missing_template_is_a_condition_until_the_template_appears():
    cluster = Cluster(now=START)
    cluster.create(claim("early", template_name="later"))
    cluster.settle()
    assert ready_reason(cluster.get("SandboxClaim", "early")) == (
        "False",
        objects.TEMPLATE_NOT_FOUND,
    )
    assert cluster.get("Sandbox", "early") is None
    cluster.create(template("later"))
    cluster.settle()
    assert ready_reason(cluster.get("SandboxClaim", "early")) == ("True", objects.SANDBOX_READY)


def test_missing_pool_is_a_condition():
    cluster = Cluster(now=START)
    cluster.create(
        {
            "apiVersion": X,
            "kind": "SandboxClaim",
            "metadata": {"name": "c"},
            "spec": {"warmPoolRef": {"name": "nope"}},
        }
    )
    cluster.settle()
    assert ready_reason(cluster.get("SandboxClaim", "c")) == ("False", objects.POOL_NOT_FOUND)


@pytest.mark.parametrize(("policy", "sandbox_kept"), [("Delete", False), ("Retain", True)])
def test_claim_expiry_follows_its_shutdown_policy(seeded: Cluster, policy: str, sandbox_kept: bool):
    seeded.create(
        claim("temp", lifecycle={"shutdownTime": "2026-01-01T00:01:00Z", "shutdownPolicy": policy})
    )
    seeded.settle()
    serving = seeded.get("Sandbox", "temp")["status"]["podName"]
    seeded.advance(120)
    seeded.settle()
    assert ready_reason(seeded.get("SandboxClaim", "temp")) == ("False", objects.EXPIRED)
    assert (seeded.get("Sandbox", "temp") is not None) == sandbox_kept
    assert seeded.get("Pod", serving) is None, "an expired sandbox's pod goes either way"


def test_a_pool_of_a_thousand_settles(seeded: Cluster):
    seeded.update_spec("SandboxWarmPool", "python-sandbox-warmpool", pool(1000)["spec"])
    seeded.settle()
    assert len(free_pods(seeded)) == 1000
    assert len({p["metadata"]["name"] for p in free_pods(seeded)}) == 1000


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.integers(0, 3)),
        st.tuples(st.just("unclaim"), st.integers(0, 3)),
        # Delete a claim and create one of the same name at once: a new uid, same name.
        st.tuples(st.just("recreate"), st.integers(0, 3)),
        st.tuples(st.just("scale"), st.integers(0, 4)),
        st.tuples(st.just("template"), st.integers(0, 2)),
        st.tuples(st.just("wait"), st.sampled_from([1, 3, 10])),
        st.tuples(st.just("stall"), st.just(0)),  # a round with no kubelet: pods stay unready
        st.tuples(st.just("round"), st.just(0)),  # one round only: the next op meets it midway
        st.tuples(st.just("stale"), st.just(0)),  # one round reading every parent stale
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS)
@example(operations=[("claim", 0), ("unclaim", 0), ("claim", 1)])
@example(operations=[("claim", 0), ("recreate", 0)])
@example(operations=[("claim", 0), ("round", 0), ("recreate", 0), ("round", 0), ("claim", 1)])
@example(
    operations=[
        ("claim", 0),
        ("claim", 1),
        ("claim", 2),
        ("scale", 0),
        ("unclaim", 1),
        ("template", 1),
        ("scale", 3),
        ("claim", 3),
        ("wait", 10),
    ]
)
def test_property_warm_pods_serve_one_sandbox_uid_ever_and_are_never_pulled_from_a_live_claim(
    operations,
):
    """Over random claims, deletions, same-name re-creations, scaling, template changes, time,
    half-finished rounds and stale reads: every rule of testbed/tenancy_rules.py holds (a pod
    serves one Sandbox uid ever, no Sandbox switches pods or is Ready on a pod that is gone or
    terminating, the claim's annotation precedes Ready), no pod serving a live claim's Sandbox
    is deleted, and in the end every claim is Ready on a pod of its own."""
    cluster = Cluster(now=START)
    violations: list[str] = []

    def check_delete(pod: dict) -> None:
        owner = objects.labels_of(pod).get(SANDBOX_UID_LABEL)
        sandbox = cluster.by_uid(owner) if owner else None
        if (
            sandbox is not None
            and lifecycle.sandbox_wants_pod(sandbox, cluster.now)
            and objects.controller_of(sandbox) is not None
            and (sandbox.get("status") or {}).get("podName") == pod["metadata"]["name"]
        ):
            violations.append(f"pod {pod['metadata']['name']} deleted while serving {owner}")

    cluster.on_delete.append(check_delete)
    cluster.create(template())
    cluster.create(pool(2))
    cluster.settle()
    for op, arg in operations:
        if op == "claim" and cluster.get("SandboxClaim", f"c{arg}") is None:
            cluster.create(claim(f"c{arg}"))
        elif op == "unclaim":
            cluster.delete("SandboxClaim", f"c{arg}")
        elif op == "recreate":
            cluster.delete("SandboxClaim", f"c{arg}")
            cluster.create(claim(f"c{arg}"))
        elif op == "scale":
            cluster.update_spec("SandboxWarmPool", "python-sandbox-warmpool", pool(arg)["spec"])
        elif op == "template":
            changed = copy.deepcopy(SEED_POD_TEMPLATE)
            changed["spec"]["containers"][0]["image"] = f"runtime:v{arg}"
            cluster.update_spec(
                "SandboxTemplate", "python-runtime-template", template(pod_template=changed)["spec"]
            )
        elif op == "wait":
            cluster.advance(arg)
        if op in ("round", "stale"):
            cluster.round(stale=op == "stale")
        else:
            cluster.settle(kubelet=op != "stall")
    cluster.make_pods_ready()
    cluster.advance(10)
    cluster.settle()
    found = check(cluster.events)
    assert violations == []
    assert found.count() == 0, found.summary()
    assert leftover_bound_pods(cluster.events) == []
    live = cluster.list("Sandbox")
    served = [s["status"].get("podName") for s in live]
    assert len(served) == len(set(served)), "two sandboxes share a pod"
    for sandbox in live:
        assert ready_reason(sandbox) == ("True", objects.SANDBOX_READY), sandbox["status"]
