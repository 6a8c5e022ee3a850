"""Every manifest under manifests/ against a real kube-apiserver: each kustomization renders
and passes a server-side dry run, so does every YAML file no kustomization reaches (except
`*-patch.yaml` kustomize patches), and the loopback overlay gives every Metacontroller hook a
loopback URL.

Metacontroller's own CRDs come from tests/fixtures/metacontroller-crds.yaml, our stand-in
(docs/testing.md says what it does and does not check). Namespaces and CRDs in a render are
applied for real first: a real `kubectl apply -k` creates them before the objects inside them,
a dry run does not persist them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import kube
from testbed.support import REPO

MANIFESTS = REPO / "manifests"
ROOT = MANIFESTS / "kustomization.yaml"
LOOPBACK = MANIFESTS / "overlays" / "loopback"
LOOPBACK_HOOKS = "http://127.0.0.1:9443"
METACONTROLLER_CRDS = REPO / "tests" / "fixtures" / "metacontroller-crds.yaml"
CONTROLLER_KINDS = ("CompositeController", "DecoratorController")
PREREQUISITE_KINDS = ("Namespace", "CustomResourceDefinition")
PATCH_SUFFIX = "-patch.yaml"


def kustomizations() -> list[Path]:
    """Every buildable kustomization directory under manifests/, the root first.

    Components (kind: Component) cannot be built alone; their consumers render them.
    """
    if not MANIFESTS.is_dir():
        return []
    found = [p.parent for p in MANIFESTS.rglob("kustomization.yaml")
             if (yaml.safe_load(p.read_text()) or {}).get("kind") != "Component"]
    return sorted(found, key=lambda d: (d != MANIFESTS, str(d)))


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = kube.kubectl_path()
    assert kubectl is not None
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ident(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']}/{where}{meta.get('name')}"


def require_kubectl() -> None:
    if kube.kubectl_path() is None:
        pytest.skip("no kubectl: run `make k8s`")


def require_root() -> None:
    assert ROOT.exists(), "manifests/kustomization.yaml is missing"


@pytest.fixture(scope="module")
def prepared(control_plane: kube.ControlPlane) -> kube.ControlPlane:
    """Metacontroller's CRDs (our stand-in) plus every Namespace and CRD the renders hold."""
    control_plane.install_crds([METACONTROLLER_CRDS])
    for directory in KUSTOMIZATIONS:
        apply_prerequisites(control_plane, render(directory))
    return control_plane


def apply_prerequisites(control_plane: kube.ControlPlane, objects: list[dict[str, Any]]) -> None:
    needed = [o for o in objects if o["kind"] in PREREQUISITE_KINDS]
    if needed:
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                              input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                "items": needed}))
        crds = [o["metadata"]["name"] for o in needed if o["kind"] == "CustomResourceDefinition"]
        if crds:
            control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                  *[f"crd/{name}" for name in crds])


KUSTOMIZATIONS = kustomizations()


@pytest.mark.parametrize("directory", [
    pytest.param(d, id=str(d.relative_to(REPO))) for d in KUSTOMIZATIONS] or [
        pytest.param(None, id="none")])
def test_kustomization_passes_server_dry_run(prepared, directory):
    """`kubectl apply --dry-run=server -k <dir>`: every object accepted, none skipped."""
    assert directory is not None, "no kustomization under manifests/"
    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    result = prepared.kubectl("apply", "--dry-run=server", "-k", str(directory),
                                   check=False)
    assert result.returncode == 0, result.stderr
    reported = result.stdout.count("(server dry run)")
    assert reported == len(objects), f"{reported} of {len(objects)} objects:\n{result.stdout}"


def rendered_root_objects() -> list[Any]:
    if kube.kubectl_path() is None:  # an external tool: the one allowed skip
        return [pytest.param(None, marks=pytest.mark.skip(reason="no kubectl: run `make k8s`"))]
    if not ROOT.exists():
        return [pytest.param(None, id="no-root-kustomization")]
    return [pytest.param(obj, id=ident(obj)) for obj in render(MANIFESTS)]


@pytest.mark.parametrize("obj", rendered_root_objects())
def test_object_passes_server_side_apply_dry_run(prepared, obj):
    """Each object alone, as GitOps tools apply it: server-side apply, strict field validation."""
    result = prepared.kubectl("apply", "--server-side", "--dry-run=server",
                                   "--field-manager=agent-sandbox-tests", "--force-conflicts",
                                   "--validate=strict", "-f", "-", input=json.dumps(obj),
                                   check=False)
    assert result.returncode == 0, result.stderr


def loose_files() -> list[Path]:
    """YAML files under manifests/ that no kustomization renders (all of their objects)."""
    if not MANIFESTS.is_dir() or kube.kubectl_path() is None:
        return []
    rendered = {ident(o) for d in KUSTOMIZATIONS for o in render(d)}
    return [path for path in sorted(MANIFESTS.rglob("*.yaml"))
            if path.name != "kustomization.yaml" and not path.name.endswith(PATCH_SUFFIX)
            and any("kind" in doc and ident(doc) not in rendered
                    for doc in kube.load_documents(path))]


@pytest.mark.parametrize("path", [
    pytest.param(p, id=str(p.relative_to(REPO))) for p in loose_files()] or [
        pytest.param(None, id="none-loose")])
def test_loose_manifest_passes_server_dry_run(prepared, path):
    """A manifest no kustomization includes (an example applied by hand) must apply too."""
    if path is None:  # nothing loose: then every manifest is checked through a kustomization
        assert KUSTOMIZATIONS and loose_files() == []
        return
    objects = [doc for doc in kube.load_documents(path) if "kind" in doc]
    apply_prerequisites(prepared, objects)
    result = prepared.kubectl("apply", "--server-side", "--dry-run=server",
                              "--field-manager=agent-sandbox-tests", "--validate=strict",
                              "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


def test_patch_files_name_their_target():
    """`*-patch.yaml` files are kustomize patches for users' overlays: not applied on their own,
    but each must name the object it patches."""
    for path in sorted(MANIFESTS.rglob(f"*{PATCH_SUFFIX}")) if MANIFESTS.is_dir() else []:
        for doc in kube.load_documents(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert doc.get("metadata", {}).get("name"), path


def controllers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in CONTROLLER_KINDS}


def test_loopback_overlay_points_every_hook_at_loopback():
    require_kubectl()
    require_root()
    if not (LOOPBACK / "kustomization.yaml").exists():
        pytest.fail("manifests/overlays/loopback/kustomization.yaml is missing")
    base = controllers(render(MANIFESTS))
    overlay = controllers(render(LOOPBACK))
    assert base, "no Metacontroller registrations under manifests/"
    assert set(overlay) == set(base)
    problems = []
    for name, controller in base.items():
        for hook, spec in sorted(controller["spec"].get("hooks", {}).items()):
            webhook = overlay[name]["spec"]["hooks"][hook]["webhook"]
            base_path = spec["webhook"].get("path") or "/" + spec["webhook"]["url"].split(
                "/", 3)[3]
            expected = LOOPBACK_HOOKS + base_path
            if webhook.get("url") != expected or "service" in webhook:
                problems.append(f"{name} {hook}: {webhook} (want url {expected}, no service)")
            # Everything but the webhook's address stays as in the base registration.
            assert {k: v for k, v in webhook.items() if k not in ("url", "service", "path")} == {
                k: v for k, v in spec["webhook"].items() if k not in ("url", "service", "path")}
        base_rest = {k: v for k, v in controller["spec"].items() if k != "hooks"}
        overlay_rest = {k: v for k, v in overlay[name]["spec"].items() if k != "hooks"}
        assert overlay_rest == base_rest, f"{name}: the overlay changed more than hook URLs"
    assert problems == []


def test_loopback_overlay_installs_no_in_cluster_hooks_server():
    """On loopback the hooks run on this machine: no Deployment that would never start."""
    require_kubectl()
    assert (LOOPBACK / "kustomization.yaml").exists(), \
        "manifests/overlays/loopback/kustomization.yaml is missing"
    kinds = {o["kind"] for o in render(LOOPBACK)}
    assert kinds <= {"CustomResourceDefinition", *CONTROLLER_KINDS}, kinds
