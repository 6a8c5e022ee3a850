"""Rules every sync hook obeys: deterministic answers, and a bad spec keeps every child; the
simulator registers the children the manifests do."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml

from hooks import objects, sandbox, sandboxclaim, sandboxtemplate, sandboxwarmpool
from hooks.typedefs import DEFAULT_SETTINGS, HookSettings
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, sync_request, with_pod_status
from testbed.support import REPO
from tests.metacontroller_sim import CONTROLLERS, PLURAL_KIND

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
# The warm-pod grace the binding tests reason about (a binding window of 4 s).
GRACE_5: HookSettings = {**DEFAULT_SETTINGS, "warm_pod_grace_seconds": 5.0}
TEMPLATE = resource(
    "SandboxTemplate", "python-runtime-template", {"podTemplate": SEED_POD_TEMPLATE}
)
POOL = resource(
    "SandboxWarmPool",
    "pool",
    {"replicas": 2, "sandboxTemplateRef": {"name": "python-runtime-template"}},
)
CLAIM = resource(
    "SandboxClaim", "claim", {"sandboxTemplateRef": {"name": "python-runtime-template"}}
)
SANDBOX = resource("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE})

# (module, valid parent, related objects, a spec change that makes it invalid)
CASES = {
    "sandbox": (sandbox, SANDBOX, [], {"replicas": 7}),
    "sandboxtemplate": (sandboxtemplate, TEMPLATE, [], {"podTemplate": {"spec": {}}}),
    "sandboxwarmpool": (sandboxwarmpool, POOL, [TEMPLATE], {"replicas": -3}),
    "sandboxclaim": (sandboxclaim, CLAIM, [TEMPLATE, POOL], {"sandboxTemplateRef": {}}),
}


def answer_json(module, request) -> str:
    return json.dumps(module.sync(request, now=NOW), sort_keys=True)


@pytest.mark.parametrize("kind", CASES)
def test_same_request_gives_byte_identical_answers(kind):
    module, parent, related, _ = CASES[kind]
    request = sync_request(parent, related=related)
    assert answer_json(module, request) == answer_json(module, request)
    # Determinism must not hinge on dict order either.
    reordered = json.loads(json.dumps(request))
    reordered["related"] = dict(reversed(list(reordered["related"].items())))
    assert answer_json(module, reordered) == answer_json(module, request)


@pytest.mark.parametrize("kind", CASES)
def test_bad_spec_keeps_every_observed_child_and_says_why(kind):
    module, parent, related, breakage = CASES[kind]
    first = module.sync(sync_request(parent, related=related), now=NOW)
    assert first["children"], "the valid parent should have children to keep"
    observed = [
        with_pod_status(owned(c, parent), ready=True) if c["kind"] == "Pod" else owned(c, parent)
        for c in first["children"]
    ]
    broken = json.loads(json.dumps(parent))
    broken["spec"].update(breakage)
    got = module.sync(sync_request(broken, observed, related), now=NOW)
    assert sorted(json.dumps(c, sort_keys=True) for c in got["children"]) == sorted(
        json.dumps(c, sort_keys=True) for c in first["children"]
    )
    (ready,) = [c for c in got["status"]["conditions"] if c["type"] == objects.READY]
    assert (ready["status"], ready["reason"]) == ("False", objects.INVALID_SPEC)
    assert ready["message"].startswith("spec")


def test_template_network_policy_fences_ingress_and_private_egress():
    got = sandboxtemplate.sync(sync_request(TEMPLATE), now=NOW)
    (policy,) = got["children"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "agents.x-k8s.io/role": "sandbox-router"
    }
    assert spec["ingress"][0]["ports"] == [{"port": 8888, "protocol": "TCP"}]
    blocked = spec["egress"][0]["to"][0]["ipBlock"]["except"]
    for cidr in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
    ):
        assert cidr in blocked
    no_dns = resource(
        "SandboxTemplate",
        "t",
        {"podTemplate": SEED_POD_TEMPLATE, "networkPolicy": {"allowClusterDNS": False}},
    )
    assert (
        len(sandboxtemplate.sync(sync_request(no_dns), now=NOW)["children"][0]["spec"]["egress"])
        == 1
    )
    off = resource(
        "SandboxTemplate",
        "t",
        {"podTemplate": SEED_POD_TEMPLATE, "networkPolicy": {"enabled": False}},
    )
    got = sandboxtemplate.sync(sync_request(off), now=NOW)
    assert got["children"] == []
    assert got["status"]["conditions"][0]["reason"] == objects.NETWORK_POLICY_DISABLED


def test_pool_pod_names_are_concrete_deterministic_and_distinct_per_pool():
    first = sandboxwarmpool.sync(sync_request(POOL, related=[TEMPLATE]), now=NOW)
    names = [c["metadata"]["name"] for c in first["children"]]
    assert len(set(names)) == 2
    assert all(n.startswith("pool-") for n in names)
    other = resource("SandboxWarmPool", "pool", POOL["spec"])
    other["metadata"]["uid"] = "another-uid"
    again = sandboxwarmpool.sync(sync_request(other, related=[TEMPLATE]), now=NOW)
    assert not set(names) & {c["metadata"]["name"] for c in again["children"]}


def test_customize_hooks_depend_on_the_parent_only():
    assert sandboxclaim.customize({"controller": {}, "parent": CLAIM})["relatedResources"] == [
        {
            "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
            "resource": "sandboxtemplates",
            "namespace": "default",
            "names": ["python-runtime-template"],
        },
        {
            "apiVersion": "v1",
            "resource": "pods",
            "namespace": "default",
            "labelSelector": {"matchLabels": {"agents.x-k8s.io/sandbox": "claim"}},
        },
    ]
    rules = sandboxwarmpool.customize({"controller": {}, "parent": POOL})["relatedResources"]
    assert [r["resource"] for r in rules] == ["sandboxes", "sandboxtemplates"]
    rules = sandboxtemplate.customize({"controller": {}, "parent": TEMPLATE})["relatedResources"]
    assert rules == [{"apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
                      "resource": "sandboxwarmpools", "namespace": "default",
                      "labelSelector": {"matchLabels": {}}}]


def test_a_claim_relates_nothing_by_name_but_its_template_and_pool():
    """Its Sandbox is its child (found by owner); a rule by name makes Metacontroller list the
    whole namespace on every sync and match every claim on every event of that kind. An
    earlier claim's Sandbox of its name, still lingering, is polled for instead: the claim
    asks to be synced again while its Sandbox is missing, and not once it is there."""
    rules = sandboxclaim.customize({"controller": {}, "parent": CLAIM})["relatedResources"]
    assert "sandboxes" not in [r["resource"] for r in rules]
    created = objects.parse_time(CLAIM["metadata"]["creationTimestamp"])
    first = sandboxclaim.sync(sync_request(CLAIM, related=[TEMPLATE]), now=created)
    assert first["resyncAfterSeconds"] == 1.0
    lingering = sandboxclaim.sync(sync_request(CLAIM, related=[TEMPLATE]), now=NOW)
    assert lingering["resyncAfterSeconds"] == 30.0
    (made,) = first["children"]
    there = sandboxclaim.sync(sync_request(CLAIM, [owned(made, CLAIM)], [TEMPLATE]), now=NOW)
    assert "resyncAfterSeconds" not in there


def test_a_claim_watches_no_pool_but_the_one_it_names():
    """A pool's status changes with every binding, and Metacontroller re-syncs every parent
    related to it on each change: a claim of a template must not relate pools (its template
    lists them), only a claim that names a pool relates that one."""
    of_template = sandboxclaim.customize({"controller": {}, "parent": CLAIM})["relatedResources"]
    assert "sandboxwarmpools" not in [r["resource"] for r in of_template]
    named = resource("SandboxClaim", "claim", {"warmPoolRef": {"name": "pool"}})
    rules = sandboxclaim.customize({"controller": {}, "parent": named})["relatedResources"]
    assert [r for r in rules if r["resource"] == "sandboxwarmpools"] == [{
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "resource": "sandboxwarmpools",
        "namespace": "default", "names": ["pool"]}]


def test_a_template_lists_the_valid_live_pools_that_serve_it():
    other = resource("SandboxWarmPool", "other-pool",
                     {"replicas": 1, "sandboxTemplateRef": {"name": "another-template"}})
    going = resource("SandboxWarmPool", "going", POOL["spec"])
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:09:00Z"
    broken = resource("SandboxWarmPool", "broken", {**POOL["spec"], "replicas": -1})
    second = resource("SandboxWarmPool", "a-pool", POOL["spec"])
    got = sandboxtemplate.sync(
        sync_request(TEMPLATE, related=[POOL, other, going, broken, second]), now=NOW)
    assert got["status"]["warmPools"] == ["a-pool", "pool"]
    assert sandboxtemplate.sync(sync_request(TEMPLATE), now=NOW)["status"]["warmPools"] == []


def test_the_simulator_registers_the_children_the_manifests_do():
    """tests/metacontroller_sim.py plays the registrations in manifests/controllers: the same
    child kinds and update strategies per parent (a child a hook returns that its registration
    lacks is never made on a real cluster)."""
    kinds = {**PLURAL_KIND, "networkpolicies": "NetworkPolicy"}
    registered = {}
    for path in sorted((REPO / "manifests" / "controllers").glob("*-controller.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        registered[kinds[spec["parentResource"]["resource"]]] = {
            kinds[c["resource"]]: c["updateStrategy"]["method"] for c in spec["childResources"]}
    assert registered == {c.parent: c.children for c in CONTROLLERS}
