"""Hostile specs against the pure hook functions, and the pods they generate on every path.

The attacker here writes Kubernetes objects: a SandboxTemplate, Sandbox or SandboxClaim with
reserved labels, wrong types where the CRD preserves unknown fields, names at and past the
limits, or a pod of their own dressed as a bound warm pod. Each case records through the
`hostile` fixture (tests/security_report.py). Gaps found are `xfail(strict=True)` with the
reason, and reported to the hooks' owner; they are not fixed here.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime

import pytest

from hooks import app as hooks_app
from hooks import objects, sandbox, sandboxclaim, sandboxtemplate, sandboxwarmpool
from hooks.objects import CLAIM_LABEL, POOL_LABEL, SANDBOX_LABEL, TEMPLATE_LABEL
from hooks.typedefs import DEFAULT_SETTINGS
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, with_pod_status
from testbed.hookrequests import sync_request as bare_request
from tests.metacontroller_sim import Cluster
from tests.unit.fenced import sync_request

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
X = "extensions.agents.x-k8s.io/v1alpha1"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

# Every key we own, as a template author might try to pre-set them.
RESERVED_LABELS = {
    SANDBOX_LABEL: "victim",
    POOL_LABEL: "someone-elses-pool",
    TEMPLATE_LABEL: "someone-elses-template",
    CLAIM_LABEL: "victim",
    "controller-uid": "uid-of-another-parent",
    "sub.agents.x-k8s.io/anything": "x",
}
RESERVED_ANNOTATIONS = {
    objects.POD_NAME_ANNOTATION: "forged",
    objects.TEMPLATE_HASH_ANNOTATION: "forged",
}


def hostile_pod_template() -> dict:
    """The seed template plus init containers, a sidecar, reserved keys and an empty
    securityContext (present, but silent about privilege escalation)."""
    template = copy.deepcopy(SEED_POD_TEMPLATE)
    template["metadata"] = {
        "labels": {"team": "a", **RESERVED_LABELS},
        "annotations": {"note": "kept", **RESERVED_ANNOTATIONS},
    }
    spec = template["spec"]
    spec["initContainers"] = [{"name": "init", "image": "busybox"}]
    spec["containers"].append({"name": "sidecar", "image": "busybox", "securityContext": {}})
    return template


def kube(kind: str, name: str, spec: dict, api: str = X) -> dict:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


def template_obj(name: str = "tpl", pod_template: dict | None = None) -> dict:
    return kube("SandboxTemplate", name, {"podTemplate": pod_template or hostile_pod_template()})


def pool_obj(replicas: int, name: str = "pool", template: str = "tpl") -> dict:
    return kube("SandboxWarmPool", name,
                {"replicas": replicas, "sandboxTemplateRef": {"name": template}})


def claim_obj(name: str, template: str = "tpl") -> dict:
    return kube("SandboxClaim", name, {"sandboxTemplateRef": {"name": template}})


def pods_of_path(path: str, pod_template: dict | None = None) -> list[dict]:
    """The pods Metacontroller would create on one template path (replayed in the simulator),
    from `pod_template` (else hostile_pod_template())."""
    pod_template = pod_template or hostile_pod_template()
    cluster = Cluster(now=NOW)
    if path == "cold sandbox":
        cluster.create(kube("Sandbox", "direct", {"podTemplate": pod_template},
                            api=objects.SANDBOX_API))
        cluster.settle()
        return [cluster.get("Pod", "direct")]
    cluster.create(template_obj(pod_template=pod_template))
    if path == "warm pool pod":
        cluster.create(pool_obj(2))
        cluster.settle()
        return cluster.list("Pod")
    if path == "claim, served warm":
        cluster.create(pool_obj(1))
        cluster.settle()
        cluster.create(claim_obj("my-claim"))
        cluster.settle()
        served = cluster.get("Sandbox", "my-claim")["status"]["podName"]
        assert served != "my-claim", "expected a warm pod to serve the claim"
        return [cluster.get("Pod", served)]
    if path == "claim, cold (empty pool)":
        cluster.create(pool_obj(0))
    cluster.create(claim_obj("my-claim"))
    cluster.settle()
    return [cluster.get("Pod", "my-claim")]


PATHS = ["cold sandbox", "warm pool pod", "claim, served warm", "claim, cold (empty pool)",
         "claim, cold (no pool)"]


@pytest.mark.parametrize("path", PATHS)
def test_generated_pods_get_the_secure_defaults_on_every_path(hostile, path):
    pods = pods_of_path(path)
    assert pods and all(p is not None for p in pods)
    for pod in pods:
        spec = pod["spec"]
        with hostile("pods", f"{path}: no service-account token"):
            assert spec["automountServiceAccountToken"] is False
        with hostile("pods", f"{path}: no privilege escalation in any container"):
            containers = spec.get("initContainers", []) + spec["containers"]
            assert len(containers) == 3
            for container in containers:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
        with hostile("pods", f"{path}: the template's runtime class (gVisor)"):
            assert spec["runtimeClassName"] == "gvisor"
        with hostile("pods", f"{path}: restricted defaults (non-root, seccomp, no capabilities)"):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] != 0
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in spec.get("initContainers", []) + spec["containers"]:
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def without_runtime_class(given: str | None) -> dict:
    """The hostile template with runtimeClassName left out (None) or set to `given`."""
    template = hostile_pod_template()
    template["spec"].pop("runtimeClassName")
    if given is not None:
        template["spec"]["runtimeClassName"] = given
    return template


@pytest.mark.parametrize("given", [None, ""], ids=["absent", "empty"])
@pytest.mark.parametrize("path", PATHS)
def test_a_template_silent_on_the_runtime_class_still_gets_gvisor(hostile, path, given):
    """Isolation is gVisor's: a template that names no RuntimeClass (or "") must not run
    model-written code on the node's default runtime (docs/security.md, finding 37)."""
    for pod in pods_of_path(path, without_runtime_class(given)):
        with hostile("pods", f"{path}: gVisor when the template's runtimeClassName is "
                             f"{'absent' if given is None else 'empty'}"):
            assert pod["spec"].get("runtimeClassName") == "gvisor"


@pytest.mark.parametrize(("given", "default", "expected"), [
    (None, "gvisor", "gvisor"),
    ("", "gvisor", "gvisor"),
    ("kata", "gvisor", "kata"),
    (None, "gvisor-kvm", "gvisor-kvm"),
    (None, "", None),  # the operator's deliberate opt-out: the node's default runtime
    ("", "", None),  # never "": the API server refuses it
    ("kata", "", "kata"),
])
def test_the_runtime_class_is_the_templates_else_the_operators(given, default, expected):
    settings = {**DEFAULT_SETTINGS, "runtime_class_name": default}
    parent = resource("Sandbox", "sbx", {"podTemplate": without_runtime_class(given)})
    got = sandbox.sync(sync_request(parent), now=NOW, settings=settings)
    (pod,) = [c for c in got["children"] if c["kind"] == "Pod"]
    assert pod["spec"].get("runtimeClassName", None) == expected
    assert "runtimeClassName" in pod["spec"] or expected is None


def test_free_warm_pods_of_another_runtime_class_are_replaced_and_ours_are_kept():
    """A free warm pod made before gVisor was the default (no runtimeClassName, from a template
    silent on it) is replaced, not handed to a claim; a pod made now is kept as it is (no
    update, no replacement: its spec reads back as we asked)."""
    cluster = Cluster(now=NOW)
    silent = without_runtime_class(None)
    cluster.create(template_obj(pod_template=silent))
    cluster.create(pool_obj(2))
    cluster.settle()
    old, ours = cluster.list("Pod")
    assert {old["spec"]["runtimeClassName"], ours["spec"]["runtimeClassName"]} == {"gvisor"}
    # As the previous version made it: no runtimeClassName in the pod nor in last-applied, and
    # the template's hash taken without one.
    old["spec"].pop("runtimeClassName")
    old["metadata"]["annotations"][objects.TEMPLATE_HASH_ANNOTATION] = objects.spec_hash(silent)
    applied = json.loads(old["metadata"]["annotations"][objects.LAST_APPLIED])
    applied["spec"].pop("runtimeClassName")
    old["metadata"]["annotations"][objects.LAST_APPLIED] = json.dumps(applied, sort_keys=True)
    ours_version = ours["metadata"]["resourceVersion"]
    cluster.settle()
    pods = cluster.list("Pod")
    assert old["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}
    assert ours["metadata"]["uid"] in {p["metadata"]["uid"] for p in pods}
    assert ours["metadata"]["resourceVersion"] == ours_version
    assert len(pods) == 2 and all(p["spec"]["runtimeClassName"] == "gvisor" for p in pods)


@pytest.mark.parametrize(("env", "expected"), [
    (None, "gvisor"), ("gvisor-kvm", "gvisor-kvm"), ("", None)])
def test_the_operator_sets_the_default_runtime_class_in_the_hooks_environment(
        monkeypatch, env, expected):
    if env is not None:
        monkeypatch.setenv("SANDBOX_HOOKS_RUNTIME_CLASS_NAME", env)
    client = hooks_app.create_app().test_client()
    parent = resource("Sandbox", "sbx", {"podTemplate": without_runtime_class(None)})
    answer = client.post("/sync/sandbox", json=sync_request(parent))
    assert answer.status_code == 200, answer.get_json()
    (pod,) = [c for c in answer.get_json()["children"] if c["kind"] == "Pod"]
    assert pod["spec"].get("runtimeClassName") == expected


def test_a_default_runtime_class_no_pod_could_name_stops_the_hooks_at_start(monkeypatch):
    monkeypatch.setenv("SANDBOX_HOOKS_RUNTIME_CLASS_NAME", "gVisor")
    with pytest.raises(ValueError, match="SANDBOX_HOOKS_RUNTIME_CLASS_NAME"):
        hooks_app.create_app()


def fencing_policies(cluster: Cluster, pod: dict) -> list[str]:
    """Names of the NetworkPolicies of the cluster whose podSelector selects `pod`."""
    labels = pod["metadata"].get("labels") or {}
    return [p["metadata"]["name"] for p in cluster.list("NetworkPolicy")
            if all(labels.get(k) == v
                   for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]


def policy_rules(policy: dict) -> dict:
    """What a NetworkPolicy allows, without whom it selects."""
    return {k: v for k, v in policy["spec"].items() if k != "podSelector"}


def test_a_sandbox_made_directly_is_fenced_by_a_network_policy(hostile):
    """Its code could reach the metadata endpoint and other pods (another tenant's unfenced
    sandbox runtime on :8888, past the router's token): docs/security.md, finding 39. It gets
    a policy of its own, the template's rules, selecting its pod and no other."""
    cluster = Cluster(now=NOW)
    cluster.create(template_obj())
    made = cluster.create(kube("Sandbox", "direct", {"podTemplate": hostile_pod_template()},
                               api=objects.SANDBOX_API))
    cluster.create(claim_obj("my-claim"))
    cluster.settle()
    pod, claims_pod = cluster.get("Pod", "direct"), cluster.get("Pod", "my-claim")
    with hostile("pods", "a Sandbox made directly is fenced by a NetworkPolicy"):
        assert fencing_policies(cluster, pod) == ["direct-sandbox"], "no policy of its own"
    policy = cluster.get("NetworkPolicy", "direct-sandbox")
    assert cluster.owner_uid(policy) == made["metadata"]["uid"]
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {objects.SANDBOX_UID_LABEL: made["metadata"]["uid"]}}
    assert policy_rules(policy) == policy_rules(cluster.get("NetworkPolicy", "tpl-sandboxes"))
    assert fencing_policies(cluster, claims_pod) == ["tpl-sandboxes"]


def test_a_template_label_on_a_sandbox_made_directly_does_not_leave_it_unfenced(hostile):
    """Anyone may label their own Sandbox with a template's name (admission guards our keys on
    pods, Services and PVCs only): one of no template, or of one whose policy is off, would
    be left unfenced if the label were trusted. Only a claim's Sandbox is left to its template."""
    cluster = Cluster(now=NOW)
    cluster.create(kube("SandboxTemplate", "open", {"podTemplate": SEED_POD_TEMPLATE,
                                                    "networkPolicy": {"enabled": False}}))
    for name, template in (("ghost", "no-such-template"), ("opened", "open")):
        made = kube("Sandbox", name, {"podTemplate": SEED_POD_TEMPLATE}, api=objects.SANDBOX_API)
        made["metadata"]["labels"] = {TEMPLATE_LABEL: template}
        cluster.create(made)
    cluster.settle()
    for name in ("ghost", "opened"):
        with hostile("pods", f"a Sandbox made directly with a template label ({name})"):
            assert fencing_policies(cluster, cluster.get("Pod", name)) == [f"{name}-sandbox"]


def test_a_claims_sandbox_gets_no_policy_of_its_own():
    """Its template's policy selects its pod: a claim costs no NetworkPolicy write."""
    cluster = Cluster(now=NOW)
    cluster.create(template_obj())
    cluster.create(pool_obj(1))
    cluster.create(claim_obj("warm"))
    cluster.create(claim_obj("cold"))
    cluster.settle()
    assert [p["metadata"]["name"] for p in cluster.list("NetworkPolicy")] == ["tpl-sandboxes"]
    for claim in ("warm", "cold"):
        served = cluster.get("Sandbox", claim)["status"]["podName"]
        assert fencing_policies(cluster, cluster.get("Pod", served)) == ["tpl-sandboxes"]


def test_a_sandbox_made_directly_starts_its_pod_only_once_its_policy_is_its_own():
    """Its code runs from the pod's start: not before the policy that fences it exists. A
    policy of that name made by someone else (not labelled with its uid) is not its own."""
    parent = resource("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE})
    first = sandbox.sync(bare_request(parent), now=NOW)
    (policy,) = [c for c in first["children"] if c["kind"] == "NetworkPolicy"]
    assert "Pod" not in {c["kind"] for c in first["children"]}
    assert "waiting for NetworkPolicy sbx-sandbox" in first["status"]["conditions"][0]["message"]
    assert "resyncAfterSeconds" in first  # the policy is missing: polled for, as a lost event
    foreign = copy.deepcopy(policy)
    foreign["metadata"]["labels"] = {"made": "by-someone"}
    for observed, pod_made in ((foreign, False), (policy, True)):
        answer = sandbox.sync(bare_request(parent, [owned(observed, parent)]), now=NOW)
        assert ("Pod" in {c["kind"] for c in answer["children"]}) is pod_made
        assert policy in answer["children"]


def test_a_sandbox_made_before_the_fix_keeps_its_running_pod_and_gets_its_policy():
    """Upgraded hooks: a direct Sandbox already served by its pod, with no policy yet."""
    parent = resource("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE})
    first = sandbox.sync(sync_request(parent), now=NOW)
    pod = next(c for c in first["children"] if c["kind"] == "Pod")
    parent["status"] = {"podName": "sbx"}
    running = [with_pod_status(owned(pod, parent), ready=True)]
    answer = sandbox.sync(bare_request(parent, running), now=NOW)
    assert {c["kind"] for c in answer["children"]} >= {"Pod", "NetworkPolicy"}
    assert answer["status"]["podName"] == "sbx"


@pytest.mark.parametrize("spec", [{"replicas": 0}, {"shutdownTime": "2026-01-01T00:05:00Z"},
                                  {"idleTimeout": "2s"}])
def test_a_sandbox_made_directly_keeps_its_policy_without_a_pod(spec):
    """Scaled to 0, expired or suspended, it keeps its policy (no delete and re-create); the
    policy goes with the Sandbox (a child: the garbage collector deletes it)."""
    cluster = Cluster(now=NOW)
    made = cluster.create(kube("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE, **spec},
                               api=objects.SANDBOX_API))
    cluster.settle()
    cluster.advance(5)
    cluster.settle()
    assert cluster.get("Pod", "sbx") is None
    assert objects.ready_reason(cluster.get("Sandbox", "sbx")) in (
        objects.SCALED_TO_ZERO, objects.SANDBOX_EXPIRED, objects.SUSPENDED)
    assert cluster.owner_uid(cluster.get("NetworkPolicy", "sbx-sandbox")) == made["metadata"]["uid"]
    cluster.delete("Sandbox", "sbx")
    cluster.settle()
    assert cluster.list("NetworkPolicy") == []


def test_the_operator_names_the_routers_namespace_for_sandboxes_made_directly(monkeypatch):
    monkeypatch.setenv("SANDBOX_HOOKS_ROUTER_NAMESPACE", "agent-sandbox-system")
    client = hooks_app.create_app().test_client()
    parent = resource("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE})
    answer = client.post("/sync/sandbox", json=bare_request(parent))
    assert answer.status_code == 200, answer.get_json()
    (policy,) = [c for c in answer.get_json()["children"] if c["kind"] == "NetworkPolicy"]
    (router,) = policy["spec"]["ingress"][0]["from"]
    assert router["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}}
    monkeypatch.setenv("SANDBOX_HOOKS_ROUTER_NAMESPACE", "Not_A_Namespace")
    with pytest.raises(ValueError, match="SANDBOX_HOOKS_ROUTER_NAMESPACE"):
        hooks_app.create_app()


@pytest.mark.parametrize("path", PATHS)
def test_template_cannot_forge_the_keys_we_own(hostile, path):
    for pod in pods_of_path(path):
        labels, annotations = pod["metadata"]["labels"], pod["metadata"].get("annotations", {})
        name = pod["metadata"]["name"]
        with hostile("pods", f"{path}: reserved labels from the template are dropped"):
            assert labels["team"] == "a"
            assert labels.get(SANDBOX_LABEL) in (None, "direct", "my-claim")
            assert labels.get(POOL_LABEL) in (None, "pool")
            assert labels.get(TEMPLATE_LABEL) in (None, "tpl")
            assert labels.get(CLAIM_LABEL) is None
            assert "sub.agents.x-k8s.io/anything" not in labels
            # controller-uid is Metacontroller's (generateSelector); the simulator sets the
            # real one, so a forged value would show up here as the template's string.
            assert labels.get("controller-uid") != RESERVED_LABELS["controller-uid"]
        with hostile("pods", f"{path}: reserved annotations from the template are dropped"):
            assert annotations.get("note") == "kept"
            assert annotations.get(objects.POD_NAME_ANNOTATION) != "forged"
            assert annotations.get(objects.TEMPLATE_HASH_ANNOTATION) != "forged"
        if path == "warm pool pod":
            with hostile("pods", "warm pod is not pre-bound to a victim by its template"):
                assert SANDBOX_LABEL not in labels, name


def test_a_template_cannot_make_its_pods_look_like_the_router(hostile):
    """The NetworkPolicy admits ingress from pods labelled app.kubernetes.io/name=sandbox-router
    in the router's namespace (default). A Sandbox in that namespace whose template carries
    that label would reach every other sandbox's runtime directly, bypassing the router's
    token. Found by this suite; see docs/security.md, Findings."""
    policy = sandboxtemplate.sync(sync_request(resource(
        "SandboxTemplate", "tpl", {"podTemplate": SEED_POD_TEMPLATE})), now=NOW)["children"][0]
    router_selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    impostor = copy.deepcopy(SEED_POD_TEMPLATE)
    impostor["metadata"] = {"labels": dict(router_selector)}
    got = sandbox.sync(sync_request(resource("Sandbox", "impostor", {"podTemplate": impostor})),
                       now=NOW)
    (pod,) = [c for c in got["children"] if c["kind"] == "Pod"]
    labels = pod["metadata"]["labels"]
    with hostile("pods", "sandbox pod labelled as the router (NetworkPolicy bypass)"):
        assert not all(labels.get(k) == v for k, v in router_selector.items()), labels


# ---- hostile specs: bad input keeps every child and says why ------------------------------


def _sandbox_with(mutate) -> dict:
    parent = resource("Sandbox", "sbx", {"podTemplate": copy.deepcopy(SEED_POD_TEMPLATE)})
    mutate(parent)
    return parent


def _containers(n: int) -> list[dict]:
    return [{"name": f"c{i}", "image": "busybox"} for i in range(n)]


OVERSIZED = {
    "33 containers": lambda p: p["spec"]["podTemplate"]["spec"].__setitem__(
        "containers", _containers(33)),
    "65 labels": lambda p: p["spec"]["podTemplate"].__setitem__(
        "metadata", {"labels": {f"k{i}": "v" for i in range(65)}}),
    "65 annotations": lambda p: p["spec"]["podTemplate"].__setitem__(
        "metadata", {"annotations": {f"k{i}": "v" for i in range(65)}}),
    "4 KiB + 1 label value": lambda p: p["spec"]["podTemplate"].__setitem__(
        "metadata", {"labels": {"k": "v" * 4097}}),
    "17 volume claim templates": lambda p: p["spec"].__setitem__(
        "volumeClaimTemplates",
        [{"metadata": {"name": f"v{i}"}, "spec": {}} for i in range(17)]),
    "replicas 2": lambda p: p["spec"].__setitem__("replicas", 2),
    "replicas -1": lambda p: p["spec"].__setitem__("replicas", -1),
    "replicas as a string": lambda p: p["spec"].__setitem__("replicas", "1"),
    "container name with a slash": lambda p: p["spec"]["podTemplate"]["spec"].__setitem__(
        "containers", [{"name": "../x", "image": "busybox"}]),
    "no containers": lambda p: p["spec"]["podTemplate"]["spec"].__setitem__("containers", []),
    "shutdownTime not a time": lambda p: p["spec"].__setitem__("shutdownTime", "tomorrow"),
    "shutdownTime without a zone": lambda p: p["spec"].__setitem__(
        "shutdownTime", "2026-01-01T00:00:00"),
    "spec is a list": lambda p: p.__setitem__("spec", []),
    "podTemplate.spec is a string": lambda p: p["spec"]["podTemplate"].__setitem__("spec", "x"),
    "64-character name": lambda p: p["metadata"].__setitem__("name", "a" * 64),
    "name starting with a digit (no Service)": lambda p: p["metadata"].__setitem__("name", "1a"),
    "upper-case name": lambda p: p["metadata"].__setitem__("name", "Web"),
    "name with a newline": lambda p: p["metadata"].__setitem__("name", "web\nx"),
    "name with a dot": lambda p: p["metadata"].__setitem__("name", "web.default"),
}


def _applied(parent: dict, answer: dict) -> list[dict]:
    return [with_pod_status(owned(c, parent), ready=True) if c["kind"] == "Pod"
            else owned(c, parent) for c in answer["children"]]


def _as_json(children: list[dict]) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True) for c in children)


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_hostile_sandbox_spec_keeps_children_and_reports_invalid_spec(hostile, case):
    good = _sandbox_with(lambda p: None)
    first = sandbox.sync(sync_request(good), now=NOW)
    observed = _applied(good, first)
    bad = _sandbox_with(OVERSIZED[case])
    with hostile("hooks", f"Sandbox spec: {case}"):
        got = sandbox.sync(sync_request(bad, observed), now=NOW)
        # Nothing new is made, nothing observed is lost (a missing child would be deleted).
        assert _as_json(got["children"]) == _as_json(first["children"])
        (ready,) = got["status"]["conditions"]
        assert (ready["status"], ready["reason"]) == ("False", objects.INVALID_SPEC)
        assert ready["message"].startswith(("spec", "metadata.name"))
        json.dumps(got)  # the answer is plain JSON


# Fields the CRD leaves open (x-kubernetes-preserve-unknown-fields) but the hooks read: the API
# server admits any type there, so the hook meets them. Wanted: InvalidSpec, children kept.
WRONG_TYPES = {
    "container securityContext null": lambda s: s["containers"][0].__setitem__(
        "securityContext", None),
    "container securityContext a string": lambda s: s["containers"][0].__setitem__(
        "securityContext", "privileged"),
    "container ports a string": lambda s: s["containers"][0].__setitem__("ports", "8888"),
    "container port entry null": lambda s: s["containers"][0].__setitem__("ports", [None]),
    "port protocol a number": lambda s: s["containers"][0].__setitem__(
        "ports", [{"containerPort": 8888, "protocol": 6}]),
    "initContainers a string": lambda s: s.__setitem__("initContainers", "x"),
    "initContainers entries strings": lambda s: s.__setitem__("initContainers", ["x"]),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrongly_typed_pod_fields_are_reported_not_crashed_on(hostile, case):
    good = _sandbox_with(lambda p: None)
    observed = _applied(good, sandbox.sync(sync_request(good), now=NOW))
    bad = _sandbox_with(lambda p: WRONG_TYPES[case](p["spec"]["podTemplate"]["spec"]))
    with hostile("hooks", f"Sandbox spec (CRD-admitted type): {case}"):
        got = sandbox.sync(sync_request(bad, observed), now=NOW)
        assert got["status"]["conditions"][0]["reason"] == objects.INVALID_SPEC
        assert len(got["children"]) == len(observed)


# ---- names at and past the limits ---------------------------------------------------------


def _all_names_and_labels_valid(children: list[dict]) -> None:
    for child in children:
        meta = child["metadata"]
        limit = 63 if child["kind"] == "Service" else 253
        assert len(meta["name"]) <= limit and DNS1123_SUBDOMAIN.match(meta["name"]), meta["name"]
        for key, value in (meta.get("labels") or {}).items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)


def test_names_of_63_characters_make_valid_children_on_every_path(hostile):
    long = "a" * 63
    cluster = Cluster(now=NOW)
    cluster.create(template_obj(long, copy.deepcopy(SEED_POD_TEMPLATE)))
    cluster.create(pool_obj(1, name=long, template=long))
    cluster.settle()
    cluster.create(claim_obj(long, template=long))
    cluster.create(claim_obj("b" * 63, template=long))
    cluster.settle()
    cluster.advance(10)
    cluster.settle()
    with hostile("hooks", "63-character template, pool and claim names"):
        made = [o for kind in ("Pod", "Service", "Sandbox", "NetworkPolicy")
                for o in cluster.list(kind)]
        assert {o["kind"] for o in made} == {"Pod", "Service", "Sandbox", "NetworkPolicy"}
        _all_names_and_labels_valid(made)
        assert cluster.get("Sandbox", long)["status"]["podName"]
        assert cluster.get("Service", "b" * 63) is not None


@pytest.mark.parametrize(("kind", "module", "name"), [
    ("SandboxClaim", sandboxclaim, "c" * 64),
    ("SandboxClaim", sandboxclaim, "9claim"),
    ("SandboxWarmPool", sandboxwarmpool, "p" * 64),
    ("SandboxWarmPool", sandboxwarmpool, "Pool"),
    ("SandboxTemplate", sandboxtemplate, "t" * 64),
    ("SandboxTemplate", sandboxtemplate, "t_1"),
])
def test_names_that_cannot_name_children_are_reported_not_acted_on(hostile, kind, module, name):
    template = resource("SandboxTemplate", "tpl", {"podTemplate": SEED_POD_TEMPLATE})
    specs = {
        "SandboxClaim": {"sandboxTemplateRef": {"name": "tpl"}},
        "SandboxWarmPool": {"replicas": 2, "sandboxTemplateRef": {"name": "tpl"}},
        "SandboxTemplate": {"podTemplate": SEED_POD_TEMPLATE},
    }
    parent = resource(kind, name, specs[kind])
    with hostile("hooks", f"{kind} named {name[:12]}{'...' if len(name) > 12 else ''} "
                          f"({len(name)} characters)"):
        got = module.sync(sync_request(parent, related=[template]), now=NOW)
        assert got["children"] == []
        (ready,) = got["status"]["conditions"]
        assert ready["reason"] == objects.INVALID_SPEC
        assert "metadata.name" in ready["message"]


# ---- hijacking a sandbox's traffic with a pod of one's own --------------------------------


def test_a_pod_not_owned_by_the_pool_cannot_pose_as_the_bound_warm_pod(hostile):
    parent = resource("Sandbox", "victim", {"podTemplate": SEED_POD_TEMPLATE},
                      labels={POOL_LABEL: "pool"}, created="2026-01-01T00:00:00Z")
    stray = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "attacker", "namespace": "default", "uid": "uid-attacker",
        "labels": {POOL_LABEL: "pool", SANDBOX_LABEL: "victim"}}, "spec": {}}
    stray = with_pod_status(stray, ready=True, ip="10.9.9.9")
    with hostile("hooks", "stray pod labelled as the sandbox's bound warm pod"):
        got = sandbox.sync(sync_request(parent, related=[stray]), now=NOW)
        assert got["status"].get("podName") != "attacker"
        assert "10.9.9.9" not in got["status"]["podIPs"]



def _vct_sandbox() -> dict:
    vct = {"metadata": {"name": "workspace"},
           "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    return resource("Sandbox", "victim", {"podTemplate": SEED_POD_TEMPLATE,
                                          "volumeClaimTemplates": [vct]})


def test_a_pvc_the_sandbox_does_not_own_is_never_mounted(hostile):
    """Finding 33: a PVC named `<vct>-<sandbox>` made by someone else (or left by an earlier
    Sandbox of that name) was mounted: Metacontroller swallows the AlreadyExists."""
    parent = _vct_sandbox()
    first = sandbox.sync(sync_request(parent), now=NOW)
    ours = next(c for c in first["children"] if c["kind"] == "PersistentVolumeClaim")
    squatted = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {
        "name": "workspace-victim", "namespace": "default", "uid": "uid-squat",
        "labels": {"controller-uid": "uid-sandbox-victim"}}, "spec": {}}
    with hostile("hooks", "PVC of the sandbox's claim name, not its own: no pod mounts it"):
        for children in ([], [squatted]):  # not a child at all; adopted without our uid
            got = sandbox.sync(sync_request(parent, children), now=NOW)
            assert not [c for c in got["children"] if c["kind"] == "Pod"]
            cond = got["status"]["conditions"][0]
            assert cond["status"] == "False" and "workspace-victim" in cond["message"]
            assert got["resyncAfterSeconds"] >= 1, "it polls for its own PVC"
    with hostile("hooks", "its own PVC observed: the pod comes, and an existing pod stays"):
        own_pvc = owned(ours, parent)
        got = sandbox.sync(sync_request(parent, [own_pvc]), now=NOW)
        pod = next(c for c in got["children"] if c["kind"] == "Pod")
        running = with_pod_status(owned(pod, parent), ready=True)
        # Its PVC gone (deleted by hand): the pod it has is kept, never answered away.
        again = sandbox.sync(sync_request(parent, [running]), now=NOW)
        assert [c["metadata"]["name"] for c in again["children"] if c["kind"] == "Pod"] == [
            "victim"]


def test_an_adopted_pod_without_the_sandboxs_uid_label_is_not_its_own(hostile):
    """Finding 32: a pod named like the Sandbox carrying its controller-uid is adopted by
    Metacontroller as its child; without our uid label (admission-guarded) it serves nothing."""
    parent = resource("Sandbox", "victim", {"podTemplate": SEED_POD_TEMPLATE})
    adopted = with_pod_status({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "victim", "namespace": "default", "uid": "uid-adopted",
        "labels": {"controller-uid": "uid-sandbox-victim"},
        "ownerReferences": [{"apiVersion": parent["apiVersion"], "kind": "Sandbox",
                             "name": "victim", "uid": "uid-sandbox-victim",
                             "controller": True}]}, "spec": {}}, ready=True, ip="10.9.9.9")
    with hostile("hooks", "adopted pod named like the sandbox, without its uid label"):
        got = sandbox.sync(sync_request(parent, [adopted]), now=NOW)
        assert got["status"].get("podName") != "victim"
        assert "10.9.9.9" not in got["status"]["podIPs"]
        assert got["status"]["conditions"][0]["status"] == "False"


@pytest.mark.parametrize("value", ["2026-01-01t00:20:00z", "2026-01-01T00:20:00z",
                                   "2026-01-01t00:20:00.5+00:00"])
def test_lower_case_rfc3339_times_are_read_not_crashed_on(hostile, value):
    """Finding 34: the API server admits these `date-time`s; both hooks answered 500."""
    parent = resource("Sandbox", "s", {"podTemplate": SEED_POD_TEMPLATE, "shutdownTime": value})
    claim = resource("SandboxClaim", "c", {"sandboxTemplateRef": {"name": "tpl"},
                                           "lifecycle": {"shutdownTime": value}})
    with hostile("hooks", f"shutdownTime {value} (lower-case RFC 3339)"):
        later = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
        expired = sandbox.sync(sync_request(parent), now=later)["status"]["conditions"][0]
        assert expired["reason"] == objects.SANDBOX_EXPIRED
        for moment, want in ((NOW, objects.SANDBOX_NOT_READY), (later, objects.EXPIRED)):
            answer = sandboxclaim.sync(sync_request(claim, related=[template_obj()]), now=moment)
            assert answer["status"]["conditions"][0]["reason"] == want


def test_a_service_the_sandbox_does_not_own_is_not_advertised(hostile):
    """Finding 35: status.serviceFQDN named a Service of the Sandbox's name that someone else
    made (or an earlier Sandbox of the name left), whose DNS name leads to their pods."""
    parent = resource("Sandbox", "victim", {"podTemplate": SEED_POD_TEMPLATE})
    first = sandbox.sync(sync_request(parent), now=NOW)
    pod = owned(next(c for c in first["children"] if c["kind"] == "Pod"), parent)
    ours = owned(next(c for c in first["children"] if c["kind"] == "Service"), parent)
    adopted = copy.deepcopy(ours)
    adopted["metadata"]["labels"] = {"controller-uid": "uid-sandbox-victim"}
    with hostile("hooks", "Service of the sandbox's name, not its own: not in its status"):
        for children in ([pod], [pod, adopted]):
            got = sandbox.sync(sync_request(parent, children), now=NOW)
            assert "serviceFQDN" not in got["status"] and "service" not in got["status"]
            assert "Service/victim" in {f"{c['kind']}/{c['metadata']['name']}"
                                        for c in got["children"]}, "still asked for"
        got = sandbox.sync(sync_request(parent, [pod, ours]), now=NOW)
        assert got["status"]["serviceFQDN"] == "victim.default.svc.cluster.local"
