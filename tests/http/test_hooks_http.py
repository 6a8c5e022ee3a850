"""The hook server over TCP: gunicorn on loopback, requests as curl or Metacontroller send them."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from sandbox_common import contract
from testbed.hookrequests import EXAMPLES, owned, sandbox, sync_request
from testbed.support import script
from tests.unit import fenced


def test_gunicorn_config_is_valid():
    result = subprocess.run(
        [script("sandbox-hooks"), "--check-config"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_sync_sandbox_over_tcp(hooks_url: str):
    answer = requests.post(
        f"{hooks_url}/sync/sandbox", json=sync_request(sandbox("web")), timeout=5
    )
    assert answer.status_code == 200
    body = answer.json()
    # Its pod waits for its NetworkPolicy to be its own (docs/security.md, finding 39).
    assert sorted(f"{c['kind']}/{c['metadata']['name']}" for c in body["children"]) == [
        "NetworkPolicy/web-sandbox",
        "Service/web",
    ]
    parent = sandbox("web")
    body = requests.post(f"{hooks_url}/sync/sandbox", json=sync_request(
        parent, [owned(c, parent) for c in body["children"]]), timeout=5).json()
    assert sorted(f"{c['kind']}/{c['metadata']['name']}" for c in body["children"]) == [
        "NetworkPolicy/web-sandbox",
        "Pod/web",
        "Service/web",
    ]
    # Its Service's name is reported with its pod's, once that Service is observed as its own.
    assert "serviceFQDN" not in body["status"]
    again = requests.post(f"{hooks_url}/sync/sandbox", json=sync_request(
        parent, [owned(c, parent) for c in body["children"]]), timeout=5)
    assert again.json()["status"]["serviceFQDN"] == "web.default.svc.cluster.local"


def test_customize_sandbox_over_tcp(hooks_url: str):
    """A Sandbox with no pool relates nothing (issue 15: no rules by name); one that offers
    itself to a pool relates the pods bound to its uid."""
    answer = requests.post(
        f"{hooks_url}/customize/sandbox",
        json={"controller": {}, "parent": sandbox("web")},
        timeout=5,
    )
    assert answer.status_code == 200
    assert answer.json() == {"relatedResources": []}
    pooled = sandbox("web", labels={"agents.x-k8s.io/warm-pool": "pool"})
    answer = requests.post(f"{hooks_url}/customize/sandbox",
                           json={"controller": {}, "parent": pooled}, timeout=5)
    assert answer.json() == {"relatedResources": [
        {"apiVersion": "v1", "resource": "pods", "namespace": "default",
         "labelSelector": {"matchLabels": {
             "agents.x-k8s.io/sandbox-uid": pooled["metadata"]["uid"]}}}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"parent": {"spec": {}}}', "metadata.name"),
        (b'{"parent": {"metadata": {"name": "a"}}, "children": {"Pod.v1": []}}', "children"),
        (b'{"parent": {"metadata": {"name": "a"}}, "finalizing": "yes"}', "finalizing"),
    ],
)
def test_malformed_requests_get_400_with_a_json_error(hooks_url: str, body: bytes, message: str):
    answer = requests.post(
        f"{hooks_url}/sync/sandbox",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_unknown_hook_is_404(hooks_url: str):
    answer = requests.post(f"{hooks_url}/sync/deployment", json=sync_request(sandbox()), timeout=5)
    assert answer.status_code == 404
    assert "no sync hook for deployment" in answer.json()["error"]


def test_oversized_body_is_413(hooks_url: str):
    answer = requests.post(
        f"{hooks_url}/sync/sandbox",
        data=b"x" * (33 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 413
    assert "error" in answer.json()


def test_a_hook_that_crashes_answers_500_never_200(hooks_url: str):
    parent = sandbox("web")
    first = requests.post(f"{hooks_url}/sync/sandbox", json=fenced.sync_request(parent), timeout=5)
    pod = next(c for c in first.json()["children"] if c["kind"] == "Pod")
    # Its own pod, whose status.conditions is not a list: the hook cannot read it and must
    # not guess.
    request = fenced.sync_request(
        parent, [{**owned(pod, parent), "status": {"conditions": "broken"}}])
    answer = requests.post(f"{hooks_url}/sync/sandbox", json=request, timeout=5)
    assert answer.status_code == 500
    assert answer.json() == {"error": "sync hook for sandbox failed; see the hooks' log"}


def test_healthz_and_metrics(hooks_url: str):
    health = requests.get(f"{hooks_url}/healthz", timeout=5)
    assert health.status_code == 200
    assert "/sync/sandbox" in health.json()["hooks"]
    for _ in range(3):
        requests.post(f"{hooks_url}/sync/sandbox", json=sync_request(sandbox()), timeout=5)
    metrics = requests.get(f"{hooks_url}/metrics", timeout=5).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith(
            'sandbox_hooks_requests_total{code="200",hook="sync",resource="sandbox"}'
        )
    )
    assert float(line.split()[-1]) >= 3
    assert "sandbox_hooks_request_seconds_bucket" in metrics


def test_answers_are_deterministic_over_the_wire(hooks_url: str):
    previous = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": contract.POD_NOT_READY,
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }
    request = sync_request(sandbox("web", shutdownTime="2099-01-01T00:00:00Z", status=previous))
    first = requests.post(f"{hooks_url}/sync/sandbox", json=request, timeout=5).json()
    second = requests.post(f"{hooks_url}/sync/sandbox", json=request, timeout=5).json()
    first.pop("resyncAfterSeconds"), second.pop("resyncAfterSeconds")  # counts down with the clock
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


EXPECTED_CHILDREN = {
    # A Sandbox's first answer: its pod waits for its NetworkPolicy (docs/security.md, 39).
    "sandbox-sync.json": (
        "/sync/sandbox", ["NetworkPolicy/my-sandbox-sandbox", "Service/my-sandbox"]),
    "sandboxtemplate-sync.json": (
        "/sync/sandboxtemplate", ["NetworkPolicy/python-runtime-template-sandboxes"]),
    "sandboxclaim-sync.json": ("/sync/sandboxclaim", ["Sandbox/my-claim"]),
}


@pytest.mark.parametrize("example", sorted(EXPECTED_CHILDREN))
def test_documented_curl_examples_answer_as_documented(hooks_url: str, example: str):
    path, children = EXPECTED_CHILDREN[example]
    answer = requests.post(f"{hooks_url}{path}", data=load_example(example),
                           headers={"Content-Type": "application/json"}, timeout=5)
    assert answer.status_code == 200
    assert sorted(f"{c['kind']}/{c['metadata']['name']}" for c in answer.json()["children"]) == \
        children


def test_documented_pool_example_binds_a_warm_pod_to_the_waiting_sandbox(hooks_url: str):
    answer = requests.post(f"{hooks_url}/sync/sandboxwarmpool",
                           data=load_example("sandboxwarmpool-sync.json"),
                           headers={"Content-Type": "application/json"}, timeout=5).json()
    uid = "uid-sandbox-my-claim"
    bound = [c for c in answer["children"]
             if c["metadata"]["labels"].get("agents.x-k8s.io/sandbox-uid") == uid]
    assert len(bound) == 1
    # Half the pool (one of two) is still free: the refill waits for a later answer.
    assert len(answer["children"]) == 2, "both pods kept, one now bound; no refill yet"
    assert answer["status"]["boundReplicas"] == 1


def load_example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()
