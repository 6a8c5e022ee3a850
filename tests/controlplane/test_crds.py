"""The project's CRDs on a real kube-apiserver: they install, are structural, and the API
server itself rejects bad specs with a message naming the field, accepts the seed examples and
serves the scale subresource.

The bad-spec table is per kind; a CRD whose kind has no rows fails `test_every_kind_has_bad_specs`
so a new kind cannot slip in unchecked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from testbed import kube

CRD_FILES = kube.crd_files()
DELETE = object()

SANDBOX = ("agents.x-k8s.io/v1alpha1", "Sandbox")
TEMPLATE = ("extensions.agents.x-k8s.io/v1alpha1", "SandboxTemplate")
CLAIM = ("extensions.agents.x-k8s.io/v1alpha1", "SandboxClaim")
POOL = ("extensions.agents.x-k8s.io/v1alpha1", "SandboxWarmPool")

SEED_POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"sandbox": "python-sandbox-example"}},
    "spec": {
        "runtimeClassName": "gvisor",
        "containers": [{
            "name": "python-runtime",
            "image": "registry.k8s.io/agent-sandbox/python-runtime-sandbox:v0.1.0",
            "ports": [{"containerPort": 8888}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8888},
                               "initialDelaySeconds": 0, "periodSeconds": 1},
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi",
                                       "ephemeral-storage": "512Mi"}},
        }],
        "restartPolicy": "OnFailure",
    },
}

# Valid objects: the seed walkthrough's template and pool (design.md section 6), a claim of
# that template, and a Sandbox with the same pod template and a volume.
VALID: dict[str, dict[str, Any]] = {
    "Sandbox": {"podTemplate": SEED_POD_TEMPLATE, "volumeClaimTemplates": [{
        "metadata": {"name": "workspace"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }]},
    "SandboxTemplate": {"podTemplate": SEED_POD_TEMPLATE},
    "SandboxClaim": {"sandboxTemplateRef": {"name": "python-runtime-template"}},
    "SandboxWarmPool": {"replicas": 2, "sandboxTemplateRef": {"name": "python-runtime-template"}},
}
API_VERSION = {kind: api for api, kind in (SANDBOX, TEMPLATE, CLAIM, POOL)}
SEED_NAMES = {"Sandbox": "python-sandbox", "SandboxTemplate": "python-runtime-template",
              "SandboxClaim": "python-claim", "SandboxWarmPool": "python-sandbox-warmpool"}

# (kind, case id, {dotted path under the object: new value or DELETE}, text the error must name)
BAD_SPECS: list[tuple[str, str, dict[str, Any], str]] = [
    ("Sandbox", "replicas-2", {"spec.replicas": 2}, "spec.replicas"),
    ("Sandbox", "replicas-negative", {"spec.replicas": -1}, "spec.replicas"),
    ("Sandbox", "replicas-string", {"spec.replicas": "one"}, "spec.replicas"),
    ("Sandbox", "no-pod-template", {"spec.podTemplate": DELETE}, "spec.podTemplate"),
    ("Sandbox", "no-containers", {"spec.podTemplate.spec.containers": []},
     "spec.podTemplate.spec.containers"),
    ("Sandbox", "containers-not-a-list", {"spec.podTemplate.spec.containers": "python"},
     "spec.podTemplate.spec.containers"),
    ("Sandbox", "container-without-name",
     {"spec.podTemplate.spec.containers.0.name": DELETE},
     "spec.podTemplate.spec.containers[0].name"),
    ("Sandbox", "container-bad-name",
     {"spec.podTemplate.spec.containers.0.name": "Python_Runtime"},
     "spec.podTemplate.spec.containers[0].name"),
    ("Sandbox", "label-not-a-string", {"spec.podTemplate.metadata.labels.sandbox": 7},
     "spec.podTemplate.metadata.labels.sandbox"),
    ("Sandbox", "shutdown-time-not-a-time", {"spec.shutdownTime": "tomorrow"},
     "spec.shutdownTime"),
    ("Sandbox", "volume-without-name", {"spec.volumeClaimTemplates.0.metadata.name": DELETE},
     "spec.volumeClaimTemplates[0].metadata.name"),
    ("Sandbox", "unknown-field", {"spec.replica": 1}, "spec.replica"),
    ("Sandbox", "name-not-dns-1035", {"metadata.name": "9lives"}, "metadata.name"),
    ("SandboxTemplate", "no-pod-template", {"spec.podTemplate": DELETE}, "spec.podTemplate"),
    ("SandboxTemplate", "containers-not-a-list", {"spec.podTemplate.spec.containers": "python"},
     "spec.podTemplate.spec.containers"),
    ("SandboxTemplate", "no-containers", {"spec.podTemplate.spec.containers": DELETE},
     "spec.podTemplate.spec.containers"),
    ("SandboxTemplate", "network-policy-enabled-string", {"spec.networkPolicy.enabled": "yes"},
     "spec.networkPolicy.enabled"),
    ("SandboxTemplate", "router-namespace-invalid",
     {"spec.networkPolicy.routerNamespace": "Not A Namespace"},
     "spec.networkPolicy.routerNamespace"),
    ("SandboxTemplate", "unknown-field", {"spec.podTemplates": {}}, "spec.podTemplates"),
    ("SandboxClaim", "no-ref", {"spec.sandboxTemplateRef": DELETE},
     "spec.sandboxTemplateRef or spec.warmPoolRef"),
    ("SandboxClaim", "template-ref-without-name", {"spec.sandboxTemplateRef.name": DELETE},
     "spec.sandboxTemplateRef.name"),
    ("SandboxClaim", "template-ref-empty-name", {"spec.sandboxTemplateRef.name": ""},
     "spec.sandboxTemplateRef.name"),
    ("SandboxClaim", "template-ref-is-a-string", {"spec.sandboxTemplateRef": "python"},
     "spec.sandboxTemplateRef"),
    ("SandboxClaim", "pool-ref-bad-name", {"spec.warmPoolRef": {"name": "Pool!"}},
     "spec.warmPoolRef.name"),
    ("SandboxClaim", "shutdown-policy-unknown", {"spec.lifecycle": {"shutdownPolicy": "Explode"}},
     "spec.lifecycle.shutdownPolicy"),
    ("SandboxClaim", "shutdown-time-number", {"spec.lifecycle": {"shutdownTime": 5}},
     "spec.lifecycle.shutdownTime"),
    ("SandboxClaim", "unknown-field", {"spec.templateRef": {"name": "x"}}, "spec.templateRef"),
    ("SandboxWarmPool", "replicas-negative", {"spec.replicas": -1}, "spec.replicas"),
    ("SandboxWarmPool", "replicas-huge", {"spec.replicas": 100000}, "spec.replicas"),
    ("SandboxWarmPool", "replicas-string", {"spec.replicas": "two"}, "spec.replicas"),
    ("SandboxWarmPool", "no-template-ref", {"spec.sandboxTemplateRef": DELETE},
     "spec.sandboxTemplateRef"),
    ("SandboxWarmPool", "template-ref-without-name", {"spec.sandboxTemplateRef.name": DELETE},
     "spec.sandboxTemplateRef.name"),
    ("SandboxWarmPool", "unknown-field", {"spec.size": 3}, "spec.size"),
    ("SandboxWarmPool", "name-not-a-label", {"metadata.name": "pool.one"}, "metadata.name"),
]


def crd_kinds() -> dict[str, str]:
    """kind -> CRD name, for every CRD found under manifests/crds/."""
    kinds = {}
    for path in CRD_FILES:
        for doc in kube.load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                kinds[doc["spec"]["names"]["kind"]] = doc["metadata"]["name"]
    return kinds


KINDS = crd_kinds()


def valid_object(kind: str, name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API_VERSION[kind], "kind": kind,
            "metadata": {"name": name or SEED_NAMES[kind]},
            "spec": copy.deepcopy(VALID[kind])}


def mutate(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of obj with each dotted path set (created as needed) or deleted."""
    result = copy.deepcopy(obj)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = result
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return result


def missing_from(sent: Any, got: Any, path: str = "spec") -> list[str]:
    """Paths of values in `sent` that `got` lacks or changed (extra defaults in `got` are fine)."""
    if isinstance(sent, dict) and isinstance(got, dict):
        return [p for key, value in sent.items()
                for p in missing_from(value, got.get(key), f"{path}.{key}")]
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        return [p for i, (a, b) in enumerate(zip(sent, got, strict=True))
                for p in missing_from(a, b, f"{path}[{i}]")]
    return [] if sent == got else [path]


def dry_run_create(control_plane: kube.ControlPlane, obj: dict[str, Any]):
    return control_plane.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                 input=json.dumps(obj), check=False)


def crd_param(path: Path):
    return pytest.param(path, id=path.name.split(".")[0])


NO_CRDS = "no CRD manifests under manifests/crds/ (run `make manifests`)"


def kinds_param(kinds: list[str]):
    if not KINDS:
        return [pytest.param(None, id="no-crds")]
    return [pytest.param(kind, id=kind) for kind in kinds]


def require_crd(kind: str | None) -> None:
    """A kind the tests name must have its CRD: a missing one is a failure, not a skip."""
    assert KINDS, NO_CRDS
    assert kind in KINDS, f"no CRD for {kind} under manifests/crds/"


@pytest.mark.parametrize("path", [crd_param(p) for p in CRD_FILES] or [
    pytest.param(None, id="no-crds")])
def test_crd_is_established_and_structural(control_plane, crds, path):
    assert path is not None, NO_CRDS
    for doc in kube.load_documents(path):
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        name = doc["metadata"]["name"]
        live = json.loads(control_plane.kubectl("get", f"crd/{name}", "-o", "json").stdout)
        conditions = {c["type"]: c for c in live["status"]["conditions"]}
        assert conditions["Established"]["status"] == "True", conditions
        assert conditions["NamesAccepted"]["status"] == "True", conditions
        assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"]
        # Every served version answers a list: the API is really there, not only registered.
        for version in doc["spec"]["versions"]:
            plural = doc["spec"]["names"]["plural"]
            listed = control_plane.get(
                f"/apis/{doc['spec']['group']}/{version['name']}/{plural}")
            assert listed.status_code == 200, listed.text


def test_every_kind_has_bad_specs(crds):
    covered = {kind for kind, *_ in BAD_SPECS}
    assert set(KINDS) <= covered, f"kinds without bad-spec rows: {set(KINDS) - covered}"
    assert set(KINDS) <= set(VALID), f"kinds without a valid example: {set(KINDS) - set(VALID)}"


@pytest.mark.parametrize("kind", kinds_param(sorted(VALID)))
def test_seed_example_is_accepted(control_plane, crds, kind):
    require_crd(kind)
    sent = valid_object(kind)
    result = dry_run_create(control_plane, sent)
    assert result.returncode == 0, result.stderr
    # Nothing we sent was pruned (the pod spec keeps probes, resources, runtimeClassName).
    assert missing_from(sent["spec"], json.loads(result.stdout)["spec"]) == []


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [pytest.param(kind, changes, field, id=f"{kind}-{case}")
     for kind, case, changes, field in BAD_SPECS])
def test_bad_spec_is_rejected_naming_the_field(control_plane, crds, kind, changes, field):
    require_crd(kind)
    result = dry_run_create(control_plane, mutate(valid_object(kind), changes))
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert field in result.stderr, result.stderr
    # A rejection by validation, not by something unrelated (connection, RBAC, not found).
    assert ("is invalid" in result.stderr or "unknown field" in result.stderr
            or "strict decoding error" in result.stderr), result.stderr


def test_defaults_are_applied_by_the_api_server(control_plane, crds, namespace):
    """Defaults in the schema are the API server's job: a minimal Sandbox gets replicas 1, a
    claim shutdownPolicy Delete, a template its NetworkPolicy settings."""
    expected = {
        "Sandbox": ("spec.replicas", 1),
        "SandboxClaim": ("spec.lifecycle.shutdownPolicy", "Delete"),
        "SandboxWarmPool": ("spec.replicas", 1),
    }
    for kind, (dotted, value) in expected.items():
        require_crd(kind)
        obj = valid_object(kind)
        obj["spec"].pop("replicas", None)
        if kind == "SandboxClaim":
            obj["spec"]["lifecycle"] = {}
        result = dry_run_create(control_plane, obj)
        assert result.returncode == 0, result.stderr
        node: Any = json.loads(result.stdout)
        for key in dotted.split("."):
            node = node[key]
        assert node == value, f"{kind} {dotted} = {node!r}"


def _scale(control_plane: kube.ControlPlane, namespace: str, resource: str) -> dict[str, Any]:
    return json.loads(control_plane.kubectl(
        "get", resource, "-n", namespace, "--subresource=scale", "-o", "json").stdout)


@pytest.mark.parametrize(("kind", "resource", "low", "high", "too_high"), [
    pytest.param("Sandbox", "sandbox", 0, 1, 2, id="Sandbox"),
    pytest.param("SandboxWarmPool", "sandboxwarmpool", 0, 5, 1001, id="SandboxWarmPool"),
])
def test_scale_subresource(control_plane, crds, namespace, kind, resource, low, high, too_high):
    require_crd(kind)
    obj = valid_object(kind, name="scaled")
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))
    target = f"{resource}/scaled"

    for replicas in (low, high):
        control_plane.kubectl("scale", target, "-n", namespace, f"--replicas={replicas}")
        spec = json.loads(control_plane.kubectl(
            "get", target, "-n", namespace, "-o", "json").stdout)["spec"]
        assert spec["replicas"] == replicas
        # Scale omits a zero replicas (omitempty).
        assert _scale(control_plane, namespace, target)["spec"].get("replicas", 0) == replicas

    refused = control_plane.kubectl("scale", target, "-n", namespace,
                                    f"--replicas={too_high}", check=False)
    assert refused.returncode != 0, "scale beyond the schema's maximum was accepted"
    assert "replicas" in refused.stderr, refused.stderr

    # status.replicas and status.selector (written by the hook) are what an HPA reads.
    status = {"replicas": high, "selector": "agents.x-k8s.io/sandbox=scaled"}
    control_plane.kubectl("patch", target, "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": status}))
    scale = _scale(control_plane, namespace, target)
    assert scale["status"]["replicas"] == high
    assert scale["status"]["selector"] == status["selector"]


def test_python_client_creates_and_watches_a_sandbox(control_plane, crds, namespace):
    """The kubernetes client (as agentic_sandbox uses it) authenticates with the fixture's
    kubeconfig, creates a custom object and sees it through a watch (served from etcd)."""
    require_crd("Sandbox")
    from kubernetes import client, watch

    api_client = control_plane.api_client()
    try:
        custom = client.CustomObjectsApi(api_client)
        group, version = SANDBOX[0].split("/")
        listed = custom.list_namespaced_custom_object(group, version, namespace, "sandboxes")
        custom.create_namespaced_custom_object(group, version, namespace, "sandboxes",
                                               valid_object("Sandbox", name="watched"))
        events = watch.Watch().stream(
            custom.list_namespaced_custom_object, group, version, namespace, "sandboxes",
            resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=20)
        seen = next(e for e in events if e["object"]["metadata"]["name"] == "watched")
        assert seen["type"] == "ADDED"
        assert seen["object"]["spec"]["replicas"] == 1
    finally:
        api_client.close()
