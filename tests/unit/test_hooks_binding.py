"""Binding by uid in the warm-pool and claim hooks: a pod serves one Sandbox uid, ever.

The pool binds only Sandboxes that offer themselves, early in their grace; a pod bound to a
uid that is gone is deleted even when a Sandbox of the same name waits; the claim names the
pod on its Sandbox as soon as the Sandbox reports it, and forwards a loss as its own reason.
"""

from __future__ import annotations

import copy

from hooks import objects, sandboxclaim, sandboxwarmpool
from hooks import sandbox as sandbox_hook
from hooks.objects import POOL_LABEL, SANDBOX_UID_LABEL
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, sync_request, with_pod_status
from tests.unit.test_hooks_contract import GRACE_5, NOW, POOL, TEMPLATE


def waiting_sandbox(name: str, uid: str, *, created: str = "2026-01-01T00:09:59Z",
                    reason: str | None = objects.WAITING_FOR_WARM_POD) -> dict:
    sandbox = resource(
        "Sandbox", name, {"podTemplate": SEED_POD_TEMPLATE},
        labels={objects.POOL_LABEL: "pool", objects.TEMPLATE_LABEL: "python-runtime-template"},
        created=created,
    )
    sandbox["metadata"]["uid"] = uid
    if reason:
        sandbox["status"] = {"conditions": [{"type": "Ready", "status": "False",
                                             "reason": reason, "message": ""}]}
    return sandbox


def pool_pods(bound: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """The pool's first answer applied and Ready; `bound` maps pod index to binding labels."""
    first = sandboxwarmpool.sync(sync_request(POOL, related=[TEMPLATE]), now=NOW)
    pods = []
    for index, child in enumerate(first["children"]):
        child["metadata"]["labels"].update((bound or {}).get(str(index), {}))  # as applied
        pods.append(with_pod_status(owned(child, POOL), ready=True))
    return pods


def by_name(answer: dict) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in answer["children"]}


def test_a_pod_of_a_gone_uid_is_deleted_not_handed_to_the_new_sandbox_of_that_name():
    old = {objects.SANDBOX_LABEL: "foo", objects.SANDBOX_UID_LABEL: "uid-old"}
    pods = pool_pods({"0": old})
    new = waiting_sandbox("foo", "uid-new")
    got = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, new]), now=NOW)
    children = by_name(got)
    old_name, free_name = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]
    assert old_name not in children, "the old tenant's pod is deleted"
    assert children[free_name]["metadata"]["labels"][objects.SANDBOX_UID_LABEL] == "uid-new"


def test_a_pod_bound_by_name_only_is_deleted():
    """Pods bound before uids carry only the name: nobody can tell which Sandbox of that
    name they served, so none keeps them."""
    pods = pool_pods({"0": {objects.SANDBOX_LABEL: "foo"}})
    sandbox = waiting_sandbox("foo", "uid-foo", reason=objects.SANDBOX_READY)
    sandbox["status"]["podName"] = pods[0]["metadata"]["name"]
    got = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, sandbox]), now=NOW)
    assert pods[0]["metadata"]["name"] not in by_name(got)


def test_by_default_a_sandbox_still_waiting_for_its_pool_after_10_s_offers_itself_and_is_bound():
    """The default grace outlasts a saturated burst's wait for a pool's answer: in a burst of
    500 claims on 10 pools of 50 the binding came 4-14 s after the Sandbox (stage means), and a
    Sandbox that gave up at 5 s started a pod of its own, a pod create, a kubelet write and a
    status write more (docs/benchmarks.md, issue 15)."""
    pods = pool_pods()
    waiting = waiting_sandbox("late", "uid-late", created="2026-01-01T00:09:50Z")
    own = sandbox_hook.sync(sync_request(waiting), now=NOW)
    assert not [c for c in own["children"] if c["kind"] == "Pod"]
    assert objects.ready_reason({"status": own["status"]}) == objects.WAITING_FOR_WARM_POD
    got = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, waiting]), now=NOW)
    uids = [c["metadata"].get("labels", {}).get(objects.SANDBOX_UID_LABEL)
            for c in got["children"]]
    assert "uid-late" in uids


def test_only_a_sandbox_that_offers_itself_early_in_its_grace_is_bound():
    pods = pool_pods()
    cases = {
        "offers": (waiting_sandbox("a", "uid-a"), True),
        "has not answered yet": (waiting_sandbox("b", "uid-b", reason=None), True),
        "started its own pod": (
            waiting_sandbox("c", "uid-c", reason=objects.POD_NOT_READY), False),
        "late in its grace": (
            waiting_sandbox("d", "uid-d", created="2026-01-01T00:09:55Z"), False),
    }
    for case, (sandbox, bound) in cases.items():
        got = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, sandbox]), now=NOW,
                                   settings=GRACE_5)
        uids = [c["metadata"].get("labels", {}).get(objects.SANDBOX_UID_LABEL)
                for c in got["children"]]
        assert (sandbox["metadata"]["uid"] in uids) == bound, case


def test_a_bound_pod_stays_while_its_sandbox_holds_it_and_goes_when_it_names_another():
    pods = pool_pods({"0": {objects.SANDBOX_LABEL: "foo", objects.SANDBOX_UID_LABEL: "uid-foo"}})
    name = pods[0]["metadata"]["name"]
    holder = waiting_sandbox("foo", "uid-foo", reason=objects.SANDBOX_READY)
    holder["status"]["podName"] = name
    kept = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, holder]), now=NOW)
    assert by_name(kept)[name]["metadata"]["labels"][objects.SANDBOX_UID_LABEL] == "uid-foo"
    holder["status"]["podName"] = "foo"  # served by its own pod after all
    gone = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, holder]), now=NOW)
    assert name not in by_name(gone)


def claim_with_sandbox(sandbox_status: dict) -> tuple[dict, list[dict]]:
    claim = resource(
        "SandboxClaim", "my-claim", {"sandboxTemplateRef": {"name": "python-runtime-template"}}
    )
    first = sandboxclaim.sync(sync_request(claim, related=[TEMPLATE, POOL]), now=NOW)
    (child,) = first["children"]
    sandbox = owned(child, claim)
    sandbox["status"] = copy.deepcopy(sandbox_status)
    return claim, [sandbox]


def ready_of(answer: dict) -> tuple[str, str]:
    (cond,) = answer["status"]["conditions"]
    return cond["status"], cond["reason"]


def sandbox_says(reason: str, pod: str | None = None) -> dict:
    status: dict = {"conditions": [
        {"type": "Ready", "status": "False", "reason": reason, "message": "m"}]}
    if pod:
        status["podName"] = pod
    return status


def test_the_claim_names_the_pod_and_is_ready_as_the_annotation_is_written():
    claim, children = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_ANNOTATION, "p-1"))
    got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL]), now=NOW)
    (sandbox,) = got["children"]
    assert sandbox["metadata"]["annotations"][objects.POD_NAME_ANNOTATION] == "p-1"
    assert ready_of(got) == ("True", objects.SANDBOX_READY)
    assert got["status"]["sandbox"] == {"name": "my-claim", "podName": "p-1"}


def test_the_claim_writes_no_annotations_before_a_pod_is_named():
    claim, children = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_WARM_POD))
    got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL]), now=NOW)
    (sandbox,) = got["children"]
    assert "annotations" not in sandbox["metadata"], "an empty map would be a needless write"
    assert ready_of(got) == ("False", objects.SANDBOX_NOT_READY)


def bound_pod(name: str, sandbox: dict, *, controller: tuple[str, str] | None = None) -> dict:
    """A pod labelled as serving `sandbox`, controlled by its pool unless said otherwise."""
    kind, owner = controller or ("SandboxWarmPool", sandbox["metadata"]["labels"][POOL_LABEL])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "labels": objects.binding_labels(sandbox),
            "ownerReferences": [{
                "apiVersion": "extensions.agents.x-k8s.io/v1alpha1"
                if kind == "SandboxWarmPool" else "agents.x-k8s.io/v1alpha1",
                "kind": kind, "name": owner, "uid": "uid-owner", "controller": True}],
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_the_claim_names_the_pod_its_sandbox_found_before_the_sandbox_reports_it():
    """Issue 15: the Sandbox holds its looking status until this annotation names the pod, so
    the claim reads the pod itself (related by the Sandbox's name label), checked like the
    Sandbox checks it: controlled by its pool, bound to its uid. It is not Ready yet: that
    waits for the Sandbox's own Ready."""
    claim, children = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_WARM_POD))
    (sandbox,) = children
    sandbox["metadata"]["labels"][POOL_LABEL] = "pool"  # as a claim of a pooled template has
    pods = [bound_pod("p-1", sandbox)]
    got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL, *pods]), now=NOW)
    (child,) = got["children"]
    assert child["metadata"]["annotations"][objects.POD_NAME_ANNOTATION] == "p-1"
    assert ready_of(got) == ("False", objects.SANDBOX_NOT_READY)
    assert got["status"]["sandbox"] == {"name": "my-claim"}


def test_the_claim_names_the_found_pod_only_once_it_is_ready():
    """A pod made for the Sandbox changes twice at once (created, then Ready): naming it at
    the first would have the claim update the Sandbox again from a cache that has not seen
    its first update, a conflict (measured: 24-38 per 100 burst claims)."""
    claim, children = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_WARM_POD))
    (sandbox,) = children
    sandbox["metadata"]["labels"][POOL_LABEL] = "pool"
    pod = bound_pod("p-1", sandbox)
    pod["status"] = {"phase": "Pending"}
    got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL, pod]), now=NOW)
    (child,) = got["children"]
    assert "annotations" not in child["metadata"]


def test_the_claim_names_its_sandboxs_own_pod_only_once_the_sandbox_said_it_started_it():
    """A Sandbox that goes cold creates its pod, then writes PodNotReady: annotating the pod
    before that write lands is an update from a stale copy, a conflict (seen in bursts: the
    retry came 5-6 s later)."""
    for reason, named in ((objects.WAITING_FOR_WARM_POD, False), (objects.POD_NOT_READY, True)):
        claim, children = claim_with_sandbox(sandbox_says(reason))
        (sandbox,) = children
        own = bound_pod("my-claim", sandbox, controller=("Sandbox", "my-claim"))
        got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL, own]), now=NOW)
        (child,) = got["children"]
        annotation = (child["metadata"].get("annotations") or {}).get(
            objects.POD_NAME_ANNOTATION)
        assert annotation == ("my-claim" if named else None), reason


def test_the_claim_names_no_pod_another_owner_or_sandbox_uid_holds():
    claim, children = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_WARM_POD))
    (sandbox,) = children
    sandbox["metadata"]["labels"][POOL_LABEL] = "pool"  # as a claim of a pooled template has
    foreign = bound_pod("p-1", sandbox, controller=("SandboxWarmPool", "another-pool"))
    earlier = bound_pod("p-2", sandbox)
    earlier["metadata"]["labels"][SANDBOX_UID_LABEL] = "uid-of-an-earlier-sandbox"
    related = [TEMPLATE, POOL, foreign, earlier]
    got = sandboxclaim.sync(sync_request(claim, children, related), now=NOW)
    (child,) = got["children"]
    assert "annotations" not in child["metadata"]


def test_a_lost_pod_is_the_claims_own_terminal_reason():
    claim, children = claim_with_sandbox(sandbox_says(objects.POD_LOST, "p-1"))
    got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL]), now=NOW)
    assert ready_of(got) == ("False", objects.POD_LOST)


def test_the_pool_serves_every_waiting_sandbox_ready_pods_first_then_warming_then_new_ones():
    """Two free pods (one Ready, one warming) and three Sandboxes waiting in their binding
    window: the oldest gets the Ready pod, the next the warming one, the last a pod made for
    it, bound at creation;
    and the pool refills its two free pods in the same answer (under steady load every answer
    binds, so a refill left for later would never come)."""
    pods = pool_pods()
    pods[1] = with_pod_status(pods[1], ready=False)
    waiting = [waiting_sandbox(f"s{i}", f"uid-s{i}", created=f"2026-01-01T00:09:5{6 + i}Z")
               for i in range(4)]
    got = sandboxwarmpool.sync(sync_request(POOL, pods, [TEMPLATE, *waiting]), now=NOW,
                               settings=GRACE_5)
    children = by_name(got)
    uid_of_pod = {n: c["metadata"]["labels"].get(objects.SANDBOX_UID_LABEL)
                  for n, c in children.items()}
    ready_pod, warming_pod = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]
    # s0 is 4 s old: past the binding window (grace 5 s - 1 s), it is not served any more.
    assert uid_of_pod[ready_pod] == "uid-s1"
    assert uid_of_pod[warming_pod] == "uid-s2"
    made = {n for n in children if n not in (ready_pod, warming_pod)}
    assert sorted(uid_of_pod[n] for n in made if uid_of_pod[n]) == ["uid-s3"]
    assert sum(1 for n in made if not uid_of_pod[n]) == 2, "two free pods again"
    assert len(set(uid_of_pod.values()) - {None}) == 3, "one pod per Sandbox uid"
    assert got["status"]["boundReplicas"] == 3


def test_a_claim_says_the_same_until_ready_whatever_its_sandbox_reports():
    """Every distinct status is an API write and an event for each client watching the claim:
    from its creation to Ready, a claim's status does not change."""
    claim = resource(
        "SandboxClaim", "my-claim", {"sandboxTemplateRef": {"name": "python-runtime-template"}}
    )
    first = sandboxclaim.sync(sync_request(claim, related=[TEMPLATE, POOL]), now=NOW)
    statuses = [first["status"]]
    for sandbox_status in ({}, sandbox_says(objects.WAITING_FOR_WARM_POD),
                           sandbox_says(objects.POD_NOT_READY, "p-1")):
        _, children = claim_with_sandbox(sandbox_status)
        claim["status"] = statuses[-1]
        got = sandboxclaim.sync(sync_request(claim, children, [TEMPLATE, POOL]), now=NOW)
        statuses.append(got["status"])
    assert all(s == statuses[0] for s in statuses), statuses
    assert ready_of(first) == ("False", objects.SANDBOX_NOT_READY)


def test_a_claim_picks_one_of_its_templates_pools_by_its_uid():
    template = copy.deepcopy(TEMPLATE)
    template["status"] = {"warmPools": ["pool-a", "pool-b"]}
    chosen = []
    for i in range(16):
        claim = resource("SandboxClaim", f"c{i}",
                         {"sandboxTemplateRef": {"name": "python-runtime-template"}})
        got = sandboxclaim.sync(sync_request(claim, related=[template]), now=NOW)
        again = sandboxclaim.sync(sync_request(claim, related=[template]), now=NOW)
        assert got == again
        chosen.append(got["children"][0]["metadata"]["labels"][objects.POOL_LABEL])
    assert set(chosen) == {"pool-a", "pool-b"}
    template["status"] = {}
    got = sandboxclaim.sync(sync_request(claim, related=[template]), now=NOW)
    assert objects.POOL_LABEL not in got["children"][0]["metadata"]["labels"], "no pool: cold"


def test_an_answer_that_binds_refills_only_once_half_the_pool_is_gone():
    """Metacontroller writes an answer's children one at a time in no set order: refill pods
    made beside a burst's bindings would delay them. So while half the pool is still free the
    refill waits for an answer that binds nothing; below half it comes at once."""
    pool4 = resource("SandboxWarmPool", "pool",
                     {"replicas": 4, "sandboxTemplateRef": {"name": "python-runtime-template"}})
    first = sandboxwarmpool.sync(sync_request(pool4, related=[TEMPLATE]), now=NOW)
    pods = [with_pod_status(owned(c, pool4), ready=True) for c in first["children"]]
    one = sandboxwarmpool.sync(
        sync_request(pool4, pods, [TEMPLATE, waiting_sandbox("a", "uid-a")]), now=NOW)
    assert len(one["children"]) == 4, "one bound, three free, none made yet"
    three = [waiting_sandbox(n, f"uid-{n}") for n in ("a", "b", "c")]
    refilled = sandboxwarmpool.sync(sync_request(pool4, pods, [TEMPLATE, *three]), now=NOW)
    assert len(refilled["children"]) == 7, "three bound, one free, three made to refill"
    idle = sandboxwarmpool.sync(sync_request(pool4, pods[1:], [TEMPLATE]), now=NOW)
    assert len(idle["children"]) == 4, "nothing to bind: the refill comes at once"


def test_a_sandbox_set_back_to_waiting_after_starting_its_own_pod_is_not_stuck():
    """Seen in the cold burst at a 5 s grace (3 claims of 50 never Ready): the Sandbox started
    its own pod and wrote PodNotReady, then an answer from a parent read before that write
    (the own pod already in its children) held the stale WaitingForWarmPod status, and
    Metacontroller wrote it back over PodNotReady. Its pool had also bound a pod made for it.
    The Sandbox then held that status for the claim to name its own pod, which the claim
    names only under PodNotReady: neither ever wrote again. Built from the dumped objects;
    the two hooks answer each other, each answer applied, until the Sandbox is Ready."""
    claim, (sandbox,) = claim_with_sandbox({})
    sandbox["metadata"]["labels"][POOL_LABEL] = "pool"
    sandbox["metadata"]["generation"] = 1
    sandbox["status"] = {
        "conditions": [{"type": "Ready", "status": "False",
                        "reason": objects.WAITING_FOR_WARM_POD, "message": "m",
                        "observedGeneration": 1,
                        "lastTransitionTime": "2026-01-01T00:09:50Z"}],
        "observedGeneration": 1, "podIPs": [], "replicas": 0,
    }
    own = with_pod_status(owned(sandbox_hook.desired_pod(sandbox), sandbox), ready=True)
    warm = bound_pod("pool-abcd-21", sandbox)
    for _ in range(4):
        answer = sandbox_hook.sync(sync_request(sandbox, [own], [warm]), now=NOW,
                                   settings=GRACE_5)
        sandbox = {**sandbox, "status": answer["status"]}
        if objects.ready_reason(sandbox) == objects.SANDBOX_READY:
            break
        got = sandboxclaim.sync(sync_request(claim, [sandbox], [TEMPLATE, POOL, own, warm]),
                                now=NOW)
        (child,) = got["children"]
        annotations = child["metadata"].get("annotations") or {}
        sandbox["metadata"] = {**sandbox["metadata"], "annotations": annotations}
    assert objects.ready_reason(sandbox) == objects.SANDBOX_READY
    assert sandbox["status"]["podName"] == own["metadata"]["name"], "its own pod, the first"


def test_an_answer_from_before_the_sandboxs_podnotready_write_repeats_it():
    """The write-back itself: the answer that starts its own pod says PodNotReady; an answer
    from a parent read before that write landed (still WaitingForWarmPod, the pod already
    among its children) says the same, so Metacontroller has nothing to write back."""
    _, (sandbox,) = claim_with_sandbox(sandbox_says(objects.WAITING_FOR_WARM_POD))
    sandbox["metadata"]["labels"][POOL_LABEL] = "pool"
    sandbox["metadata"]["generation"] = 1
    sandbox["status"]["conditions"][0]["observedGeneration"] = 1
    cold = sandbox_hook.sync(sync_request(sandbox), now=NOW, settings=GRACE_5)
    (pod,) = [c for c in cold["children"] if c["kind"] == "Pod"]
    assert objects.ready_reason({"status": cold["status"]}) == objects.POD_NOT_READY
    for ready in (False, True):
        own = with_pod_status(owned(pod, sandbox), ready=ready)
        stale = sandbox_hook.sync(sync_request(sandbox, [own]), now=NOW, settings=GRACE_5)
        assert stale["status"] == cold["status"], f"pod ready: {ready}"
