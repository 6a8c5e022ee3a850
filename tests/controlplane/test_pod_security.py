"""Pods the hooks generate pass the "restricted" Pod Security Standard, on a real kube-apiserver.

A namespace labelled `pod-security.kubernetes.io/enforce=restricted` makes the API server's
built-in PodSecurity admission refuse any pod that does not meet the profile. For the seed's
template (design.md section 6) and every pod template shipped as an example
(manifests/examples/*.yaml, agentic_sandbox/templates/*.yaml), the pods the hooks make from it
(a Sandbox's own pod and a warm pool's pod) are created there for real and must be admitted.
As a control, the same template's pod without the hooks' defaults must be refused: proof that
the namespace enforces, and that it is the defaults that make the difference.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from hooks import sandbox, sandboxwarmpool
from testbed import kube
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, sync_request
from testbed.support import REPO
from tests.controlplane.conftest import fresh_namespace

EXAMPLE_FILES = sorted([*(REPO / "manifests" / "examples").glob("*.yaml"),
                        *(REPO / "agentic_sandbox" / "templates").glob("*.yaml")])
NOW = datetime.now(UTC)


def specs() -> list[tuple[str, str, dict[str, Any]]]:
    """(id, kind, spec): the seed's template, and every SandboxTemplate and Sandbox in the
    example files."""
    found = [("seed", "SandboxTemplate", {"podTemplate": SEED_POD_TEMPLATE})]
    for path in EXAMPLE_FILES:
        for doc in kube.load_documents(path):
            if doc.get("kind") in ("SandboxTemplate", "Sandbox"):
                found.append((f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}",
                              doc["kind"], doc["spec"]))
    return found


def generated_pods(kind: str, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pods the hooks make: a Sandbox's own pod (from the Sandbox, or from a Sandbox with
    the template's pod template, as a claim makes it), and for a template a warm pool's pod."""
    sandbox_spec = spec if kind == "Sandbox" else {"podTemplate": spec["podTemplate"]}
    cold = resource("Sandbox", "cold", sandbox_spec)
    first = sandbox.sync(sync_request(cold), now=NOW)
    # Its pod comes once its PVCs are observed as its own (docs/security.md, finding 33).
    answers = {"sandbox pod": sandbox.sync(
        sync_request(cold, [owned(c, cold) for c in first["children"]]), now=NOW)}
    if kind == "SandboxTemplate":
        template = resource("SandboxTemplate", "tpl", spec)
        pool = resource("SandboxWarmPool", "pool",
                        {"replicas": 1, "sandboxTemplateRef": {"name": "tpl"}})
        answers["warm-pool pod"] = sandboxwarmpool.sync(sync_request(pool, related=[template]),
                                                        now=NOW)
    pods = {path: child for path, answer in answers.items()
            for child in answer["children"] if child["kind"] == "Pod"}
    assert set(pods) == set(answers), answers
    return pods


@pytest.fixture
def restricted_namespace(control_plane: kube.ControlPlane) -> Iterator[str]:
    with fresh_namespace(control_plane, "psa", {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}) as name:
        yield name


def create(plane: kube.ControlPlane, pod: dict[str, Any], namespace: str,
           *dry_run: str) -> tuple[bool, str]:
    pod = json.loads(json.dumps(pod))
    pod["metadata"]["namespace"] = namespace
    pod["metadata"]["name"] = f"{pod['metadata']['name'][:40]}-{uuid.uuid4().hex[:6]}"
    done = plane.kubectl("create", *dry_run, "-o", "name", "-f", "-", input=json.dumps(pod),
                         check=False)
    return done.returncode == 0, done.stderr.strip()


@pytest.mark.parametrize(("case", "kind", "spec"), [
    pytest.param(case, kind, spec, id=case) for case, kind, spec in specs()])
def test_generated_pods_are_admitted_under_restricted(control_plane, crds, restricted_namespace,
                                                      case, kind, spec):
    pods = generated_pods(kind, spec)
    for path, pod in pods.items():
        admitted, error = create(control_plane, pod, restricted_namespace)
        assert admitted, f"{case}: the {path} was refused: {error}"

    # The control: the same pod with the template's own pod spec, without the hooks' defaults.
    bare = json.loads(json.dumps(pods["sandbox pod"]))
    bare["spec"] = json.loads(json.dumps(spec["podTemplate"]["spec"]))
    bare["spec"]["volumes"] = pods["sandbox pod"]["spec"].get("volumes", [])
    for dry_run in ((), ("--dry-run=server",)):
        admitted, error = create(control_plane, bare, restricted_namespace, *dry_run)
        assert not admitted, f"{case}: the template's own pod was admitted; is PSA enforcing?"
        assert "violates PodSecurity" in error and "restricted" in error, error


def test_every_example_file_was_found():
    cases = [case for case, _, _ in specs()]
    assert len(cases) >= 4, cases
    assert any("agentic_sandbox/templates" in case for case in cases)
    assert any("manifests/examples/sandbox.yaml" in case for case in cases)
