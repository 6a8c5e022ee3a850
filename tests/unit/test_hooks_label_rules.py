"""A spec the API server would refuse is refused by the hook first: labels, annotations, names.

Hooks copy a template's labels and annotations into pods, and names into label values. What
Kubernetes would refuse there (values of 64+ characters, spaces or '/', keys of 70 characters,
bad prefixes) must give Ready=False InvalidSpec naming the field, with every observed child
kept, on every hook that would copy it: Sandbox, SandboxTemplate, SandboxWarmPool (from its
template) and SandboxClaim (from its template). hooks/k8srules.py holds the rules; the CRDs
render them too (tests/controlplane/test_label_rules.py).
"""

from __future__ import annotations

import copy
import json

import pytest

from hooks import k8srules, objects, sandbox, sandboxclaim, sandboxtemplate, sandboxwarmpool
from testbed.hookrequests import SEED_POD_TEMPLATE, owned, resource, sync_request, with_pod_status
from tests.unit.test_hooks_contract import NOW

PREFIX_253 = ".".join(["a" * 63] * 4)[:253]
# case -> (labels, annotations) put in the pod template's metadata
BAD_METADATA = {
    "label value of 64 characters": ({"team": "v" * 64}, {}),
    "label value with a space": ({"team": "a b"}, {}),
    "label value with a slash": ({"team": "a/b"}, {}),
    "label value ending in '-'": ({"team": "a-"}, {}),
    "label key of 70 characters": ({"k" * 70: "v"}, {}),
    "label key with an upper-case prefix": ({"Example.com/team": "a"}, {}),
    "label key with a prefix starting with '-'": ({"-example.com/team": "a"}, {}),
    "label key with a 254-character prefix": ({PREFIX_253 + "a/team": "a"}, {}),
    "label key with two slashes": ({"example.com/a/b": "v"}, {}),
    "label key with an empty name": ({"example.com/": "v"}, {}),
    "annotation key of 70 characters": ({}, {"n" * 70: "v"}),
    "annotation key with a space": ({}, {"a note": "v"}),
}
GOOD_METADATA = {
    "63-character value, empty value": ({"a": "v" * 63, "b": ""}, {}),
    "253-character prefix and 63-character name": ({PREFIX_253 + "/" + "n" * 63: "v"}, {}),
    "dots, underscores, upper case": ({"app.kubernetes.io/Name_x": "A.b_c-D"}, {"x.io/y": "/ "}),
}
TEMPLATE_NAME = "tpl"


def pod_template(labels: dict, annotations: dict) -> dict:
    template = copy.deepcopy(SEED_POD_TEMPLATE)
    template["metadata"] = {"labels": {"sandbox": "python-sandbox-example", **labels},
                            "annotations": annotations}
    return template


def template_obj(labels: dict, annotations: dict, name: str = TEMPLATE_NAME) -> dict:
    return resource("SandboxTemplate", name, {"podTemplate": pod_template(labels, annotations)})


def pool_obj(template: str = TEMPLATE_NAME) -> dict:
    return resource("SandboxWarmPool", "pool",
                    {"replicas": 1, "sandboxTemplateRef": {"name": template}})


def claim_obj(template: str = TEMPLATE_NAME) -> dict:
    return resource("SandboxClaim", "my-claim", {"sandboxTemplateRef": {"name": template}})


def observed(parent: dict, answer: dict) -> list[dict]:
    return [with_pod_status(owned(c, parent), ready=True) if c["kind"] == "Pod"
            else owned(c, parent) for c in answer["children"]]


def as_json(children: list[dict]) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True) for c in children)


def first_and_broken(kind: str, labels: dict, annotations: dict) -> tuple:
    """(module, the answer to a valid parent, a request with the broken spec and the children
    of the valid answer observed), for one kind of parent."""
    good = template_obj({}, {})
    bad = template_obj(labels, annotations)
    if kind == "Sandbox":
        parent = resource("Sandbox", "sbx", {"podTemplate": good["spec"]["podTemplate"]})
        first = sandbox.sync(sync_request(parent), now=NOW)
        broken = copy.deepcopy(parent)
        broken["spec"] = {"podTemplate": bad["spec"]["podTemplate"]}
        return sandbox, first, sync_request(broken, observed(parent, first))
    if kind == "SandboxTemplate":
        first = sandboxtemplate.sync(sync_request(good), now=NOW)
        return sandboxtemplate, first, sync_request(bad, observed(good, first))
    module, parent = {"SandboxWarmPool": (sandboxwarmpool, pool_obj()),
                      "SandboxClaim": (sandboxclaim, claim_obj())}[kind]
    first = module.sync(sync_request(parent, related=[good]), now=NOW)
    if kind == "SandboxClaim":
        # A claim copies its template once, when it makes its Sandbox; after that the Sandbox's
        # own spec is what counts (and the Sandbox hook checks it).
        return module, {"children": []}, sync_request(parent, [], [bad])
    return module, first, sync_request(parent, observed(parent, first), [bad])


KINDS = ["Sandbox", "SandboxTemplate", "SandboxWarmPool", "SandboxClaim"]


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
@pytest.mark.parametrize("kind", KINDS)
def test_a_label_or_annotation_kubernetes_refuses_keeps_children_and_names_the_field(kind, case):
    labels, annotations = BAD_METADATA[case]
    module, first, request = first_and_broken(kind, labels, annotations)
    assert first["children"] or kind == "SandboxClaim", "the valid parent should have children"
    got = module.sync(request, now=NOW)
    assert as_json(got["children"]) == as_json(first["children"])
    (ready,) = got["status"]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", objects.INVALID_SPEC)
    field = "labels" if labels else "annotations"
    assert f"spec.podTemplate.metadata.{field}." in ready["message"], ready["message"]
    if kind in ("SandboxWarmPool", "SandboxClaim"):
        assert ready["message"].startswith(f"SandboxTemplate {TEMPLATE_NAME}: "), ready["message"]


@pytest.mark.parametrize("case", sorted(GOOD_METADATA))
@pytest.mark.parametrize("kind", KINDS)
def test_labels_at_the_limits_are_copied(kind, case):
    labels, annotations = GOOD_METADATA[case]
    module, _, request = first_and_broken(kind, labels, annotations)
    got = module.sync(request, now=NOW)
    assert all(c["reason"] != objects.INVALID_SPEC for c in got["status"]["conditions"])
    for pod in (c for c in got["children"] if c["kind"] == "Pod"):
        assert labels.items() <= pod["metadata"]["labels"].items()


def test_a_volume_claim_templates_labels_are_checked_too():
    vct = {"metadata": {"name": "data", "labels": {"tier": "a b"}}, "spec": {}}
    parent = resource("Sandbox", "sbx", {"podTemplate": SEED_POD_TEMPLATE,
                                         "volumeClaimTemplates": [vct]})
    got = sandbox.sync(sync_request(parent), now=NOW)
    (ready,) = got["status"]["conditions"]
    assert ready["reason"] == objects.INVALID_SPEC
    assert "spec.volumeClaimTemplates[0].metadata.labels.tier" in ready["message"]


@pytest.mark.parametrize(("module", "parent", "field"), [
    (sandboxclaim, claim_obj("t" * 64), "spec.sandboxTemplateRef.name"),
    (sandboxwarmpool, pool_obj("t" * 64), "spec.sandboxTemplateRef.name"),
    (sandboxclaim, resource("SandboxClaim", "c", {"warmPoolRef": {"name": "p" * 70}}),
     "spec.warmPoolRef.name"),
], ids=["claim's template reference", "pool's template reference", "claim's pool reference"])
def test_a_reference_that_would_become_an_over_long_label_is_invalid(module, parent, field):
    got = module.sync(sync_request(parent), now=NOW)
    (ready,) = got["status"]["conditions"]
    assert ready["reason"] == objects.INVALID_SPEC
    assert ready["message"].startswith(field), ready["message"]
    assert got["children"] == []


KEYS = {
    "a": True, "a.b_c-D": True, "k" * 63: True, "k" * 64: False, "": False, "-a": False,
    "a-": False, "a b": False, "example.com/a": True, "Example.com/a": False,
    "example.com/": False, "/a": False, "a/b/c": False, PREFIX_253 + "/a": True,
    PREFIX_253 + "a/a": False, "ex_ample.com/a": False, "a." + "b" * 62 + "/x": True,
}


@pytest.mark.parametrize("key", sorted(KEYS), ids=lambda k: repr(k[:30]))
def test_qualified_names_follow_kubernetes(key):
    assert (k8srules.qualified_name_problem(key) is None) == KEYS[key]
