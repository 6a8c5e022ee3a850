"""The API server refuses, at admission, the labels, annotations and names the hooks would
report as InvalidSpec, and both agree with Kubernetes' own rules for pods.

The CRDs carry rules rendered from hooks/k8srules.py (CEL for keys, maxLength and pattern for
values and names). Here a real kube-apiserver gets: SandboxTemplates and Sandboxes with each
bad label or annotation of the unit tier (refused, the message naming the field), the limits
(admitted), references and names that would become over-long label values (refused), and a
corpus of keys and values tried on a SandboxTemplate and on a plain Pod, whose verdicts must
match the Python check: the CRD rule, the hooks and Kubernetes' own pod validation agree.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hooks import k8srules
from testbed import kube
from testbed.hookrequests import API, SEED_POD_TEMPLATE
from tests.unit.test_hooks_label_rules import BAD_METADATA, GOOD_METADATA, KEYS

VALUES = ["", "v", "v" * 63, "v" * 64, "a b", "a/b", "a-", "-a", "A.b_c-D", "a\nb"]


def admitted(plane: kube.ControlPlane, obj: dict[str, Any], namespace: str) -> tuple[bool, str]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    done = plane.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-",
                         input=json.dumps(obj), check=False)
    return done.returncode == 0, done.stderr.strip()


def template(labels: dict, annotations: dict, name: str = "tpl") -> dict[str, Any]:
    pod_template = copy.deepcopy(SEED_POD_TEMPLATE)
    pod_template["metadata"] = {"labels": labels, "annotations": annotations}
    return {"apiVersion": API["SandboxTemplate"], "kind": "SandboxTemplate",
            "metadata": {"name": name}, "spec": {"podTemplate": pod_template}}


def pod(labels: dict) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_the_api_server_refuses_what_the_hooks_call_invalid(control_plane, crds, namespace,
                                                            case):
    labels, annotations = BAD_METADATA[case]
    ok, error = admitted(control_plane, template(labels, annotations), namespace)
    assert not ok, f"{case}: admitted"
    field = "labels" if labels else "annotations"
    assert f"spec.podTemplate.metadata.{field}" in error, error


@pytest.mark.parametrize("case", sorted(GOOD_METADATA))
def test_the_api_server_admits_the_limits(control_plane, crds, namespace, case):
    ok, error = admitted(control_plane, template(*GOOD_METADATA[case]), namespace)
    assert ok, f"{case}: {error}"


def test_keys_and_values_agree_with_kubernetes_own_pod_validation(control_plane, crds,
                                                                   namespace):
    disagreements = []
    for key in sorted(KEYS):
        python = k8srules.qualified_name_problem(key) is None
        for what, obj in (("template", template({key: "v"}, {key: "v"})),
                          ("pod", pod({key: "v"}))):
            ok, error = admitted(control_plane, obj, namespace)
            if ok != python:
                disagreements.append(f"key {key[:40]!r}: {what} {ok}, python {python}: {error}")
    for value in VALUES:
        python = k8srules.RULES["label-value"].problem(value) is None
        for what, obj in (("template", template({"k": value}, {})), ("pod", pod({"k": value}))):
            ok, error = admitted(control_plane, obj, namespace)
            if ok != python:
                disagreements.append(f"value {value!r}: {what} {ok}, python {python}: {error}")
    assert disagreements == []


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("SandboxClaim", {"sandboxTemplateRef": {"name": "t" * 64}}, "spec.sandboxTemplateRef.name"),
    ("SandboxClaim", {"warmPoolRef": {"name": "p" * 70}}, "spec.warmPoolRef.name"),
    ("SandboxWarmPool", {"sandboxTemplateRef": {"name": "t" * 70}},
     "spec.sandboxTemplateRef.name"),
], ids=["claim's template reference", "claim's pool reference", "pool's template reference"])
def test_references_that_would_become_over_long_labels_are_refused(control_plane, crds,
                                                                   namespace, kind, spec, field):
    obj = {"apiVersion": API[kind], "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    ok, error = admitted(control_plane, obj, namespace)
    assert not ok and field in error, error


@pytest.mark.parametrize("kind", ["SandboxTemplate", "SandboxWarmPool", "SandboxClaim"])
def test_names_that_become_label_values_are_refused_at_70_characters(control_plane, crds,
                                                                     namespace, kind):
    spec = template({}, {})["spec"] if kind == "SandboxTemplate" else \
        {"sandboxTemplateRef": {"name": "tpl"}}
    obj = {"apiVersion": API[kind], "kind": kind, "metadata": {"name": "n" * 70}, "spec": spec}
    ok, error = admitted(control_plane, obj, namespace)
    assert not ok and "metadata.name" in error, error
