"""sandbox_common/contract.py: the names every package shares, and the reasons a client acts on.

The hooks write condition reasons; the client decides from them whether to keep waiting or to
fail at once. Both read the reasons from the contract, and these tests keep it so: every reason
a hook module can write (found by reading the hook modules themselves, so a reason added
tomorrow is checked without editing this file) is classified there, the client stops waiting
on exactly the terminal ones, and the spellings the seed walkthrough and the CRDs fix do not
drift.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from agentic_sandbox import ClaimFailedError, TemplateNotFoundError
from agentic_sandbox._backends.claims import judge
from agentic_sandbox._backends.kubernetes import TERMINAL_CLAIM_READY_REASONS
from hooks import objects
from sandbox_common import contract
from sandbox_router import headers
from testbed.hookrequests import EXAMPLES

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks"
SERVERS = {"app", "gunicorn_conf", "__main__", "__init__"}
HOOK_MODULES = sorted(p.stem for p in HOOKS.glob("*.py") if p.stem not in SERVERS)
# A word shaped like a reason (CamelCase or all capitals, one word).
WORD = re.compile(r"[A-Z][A-Za-z]+")
# Kubernetes' own words that hook modules write (kinds, condition statuses, pod phases,
# protocols, policy types): not reasons of ours, so the contract need not classify them.
KUBERNETES_WORDS = {
    "ALL", "Delete", "Egress", "Failed", "False", "Ingress", "NetworkPolicy", "None",
    "Pending", "PersistentVolumeClaim", "Pod", "Retain", "RuntimeDefault", "Service",
    "Succeeded", "TCP", "True", "UDP",
}
NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
SHARED_MODULES = {"hooks.objects": objects, "sandbox_common.contract": contract}


def words_written_by(stem: str) -> set[str]:
    """Every reason-shaped string a hook module can put in its output: its literals, and the
    values of the shared names it reads (objects.NAME, contract.NAME, or imported by name)."""
    tree = ast.parse((HOOKS / f"{stem}.py").read_text())
    module = importlib.import_module(f"hooks.{stem}")
    values: list[object] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            values.append(node.value)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            shared = getattr(module, node.value.id, None)
            if isinstance(shared, ModuleType) and shared.__name__ in SHARED_MODULES:
                values.append(getattr(shared, node.attr, None))
        elif isinstance(node, ast.ImportFrom) and node.module in SHARED_MODULES:
            values += [getattr(SHARED_MODULES[node.module], alias.name, None)
                       for alias in node.names]
    return {v for v in values if isinstance(v, str) and WORD.fullmatch(v)}


def test_the_reason_classes_are_disjoint_and_make_up_every_reason():
    classes = (contract.READY_REASONS, contract.WAITING_REASONS, contract.TERMINAL_REASONS)
    assert sum(len(c) for c in classes) == len(contract.REASONS)
    assert all(WORD.fullmatch(reason) for reason in contract.REASONS)


def test_there_are_hook_modules_to_read():
    assert set(HOOK_MODULES) >= {"objects", "sandbox", "sandboxclaim", "sandboxtemplate",
                                 "sandboxwarmpool"}
    assert "PodLost" in words_written_by("objects")


@pytest.mark.parametrize("stem", HOOK_MODULES)
def test_every_reason_a_hook_module_writes_is_classified_by_the_contract(stem):
    kinds = {contract.SANDBOX_KIND, contract.CLAIM_KIND, contract.TEMPLATE_KIND,
             contract.POOL_KIND}
    known = contract.REASONS | kinds | {contract.READY} | KUBERNETES_WORDS
    unknown = words_written_by(stem) - known
    assert not unknown, (
        f"hooks/{stem}.py writes {sorted(unknown)}: spell each reason once in "
        "sandbox_common/contract.py and put it in READY_, WAITING_ or TERMINAL_REASONS, so "
        "the client knows whether to keep waiting")


def test_a_claim_forwards_only_terminal_sandbox_reasons():
    assert set(objects.TERMINAL_SANDBOX_REASONS) <= contract.TERMINAL_REASONS


def test_the_documented_hook_requests_answer_with_classified_reasons():
    for path in sorted(EXAMPLES.glob("*-sync.json")):
        resource = path.name.removesuffix("-sync.json")
        module = importlib.import_module(f"hooks.{resource}")
        answer = module.sync(json.loads(path.read_text()), now=NOW)
        for condition in answer["status"].get("conditions") or []:
            assert condition["reason"] in contract.REASONS, (path.name, condition)


def test_the_client_stops_waiting_on_exactly_the_terminal_reasons():
    assert TERMINAL_CLAIM_READY_REASONS == contract.TERMINAL_REASONS
    for reason in sorted(contract.WAITING_REASONS):
        assert judge(claim_status("False", reason), "ns", "claim") is None, reason
    for reason in sorted(contract.TERMINAL_REASONS):
        with pytest.raises(ClaimFailedError) as failed:
            judge(claim_status("False", reason), "ns", "claim")
        assert failed.value.reason == reason
    with pytest.raises(TemplateNotFoundError):
        judge(claim_status("False", contract.TEMPLATE_NOT_FOUND), "ns", "claim")
    assert judge(claim_status("True", contract.SANDBOX_READY), "ns", "claim") == "claim"


def claim_status(status: str, reason: str) -> dict:
    return {"status": {"conditions": [{"type": contract.READY, "status": status,
                                       "reason": reason, "message": "m"}]}}


def test_the_router_forwards_none_of_the_routing_headers_it_reads():
    assert headers.ROUTING_HEADERS == contract.ROUTING_HEADERS
    assert {headers.SANDBOX_ID, headers.SANDBOX_NAMESPACE, headers.SANDBOX_PORT,
            headers.SANDBOX_TIMEOUT, headers.SANDBOX_UID} == set(contract.ROUTING_HEADERS)


def test_the_api_names_match_the_crds_rendered_from_the_schemas():
    schemas = [json.loads(p.read_text()) for p in (REPO / "schemas").glob("*.json")]
    crds = {s["x-crd"]["kind"]: s["x-crd"] for s in schemas if "x-crd" in s}
    expected = {
        contract.SANDBOX_KIND: (contract.GROUP, contract.SANDBOXES),
        contract.CLAIM_KIND: (contract.EXTENSIONS_GROUP, contract.CLAIMS),
        contract.TEMPLATE_KIND: (contract.EXTENSIONS_GROUP, contract.TEMPLATES),
        contract.POOL_KIND: (contract.EXTENSIONS_GROUP, contract.POOLS),
    }
    for kind, (group, plural) in expected.items():
        crd = crds[kind]
        assert (crd["group"], crd["version"], crd["plural"]) == (group, contract.VERSION, plural)


def test_the_names_the_seed_walkthrough_fixes_are_spelled_as_upstream_spells_them():
    # Renaming any of these breaks every existing client, manifest or router: not a refactor.
    assert contract.SANDBOX_API == "agents.x-k8s.io/v1alpha1"
    assert contract.EXTENSIONS_API == "extensions.agents.x-k8s.io/v1alpha1"
    assert contract.ROUTING_HEADERS[:3] == ("X-Sandbox-ID", "X-Sandbox-Namespace",
                                            "X-Sandbox-Port")
    assert contract.POD_NAME_ANNOTATION == "agents.x-k8s.io/pod-name"
    assert contract.SANDBOX_KEY == "Sandbox.agents.x-k8s.io/v1alpha1"


def test_the_contract_imports_nothing():
    tree = ast.parse((REPO / "sandbox_common" / "contract.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
