"""The seed walkthrough end to end on a real Metacontroller: client -> router -> runtime.

Our hooks under gunicorn and Metacontroller run the seed's template, a warm pool of two and
the client's claim; the kubelet stand-in gives every pod its own loopback address with a real
`sandbox-runtime` on the seed's port 8888; a real `sandbox-router` resolves the sandbox from the
API server (its watch cache) and forwards to the pod's address; the real client creates the
claim, waits for Ready, sends its commands with the routing headers and the router's token,
and deletes the claim.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic_sandbox import SandboxClient
from testbed.hookrequests import SEED_POD_TEMPLATE
from testbed.kubelet import Kubelet, running_kubelet
from testbed.support import free_port, script, serve

X = "extensions.agents.x-k8s.io/v1alpha1"
TEMPLATE = "python-runtime-template"


@pytest.fixture
def router(metacontroller_stack, namespace, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real sandbox-router for the namespace (Kubernetes source, loopback pods allowed)."""
    stack = metacontroller_stack
    router_port = free_port()
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    argv = [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(router_port),
            "--source", "kubernetes", "--namespace", namespace, "--allow-loopback-pods",
            "--token-file", str(token_file)]
    with serve(argv, router_port, env={"KUBECONFIG": str(stack.plane.kubeconfig)}):
        yield {"url": f"http://127.0.0.1:{router_port}", "token": token}


@pytest.fixture
def seed_kubelet(metacontroller_stack, namespace, tmp_path: Path) -> Iterator[Kubelet]:
    """The stand-in for the seed's own template: its 30 s default grace period is capped at
    3 s here, so the claim's clean-up is waited for, not slept through."""
    with running_kubelet(metacontroller_stack, namespace, tmp_path / "kubelet",
                         max_grace_seconds=3) as player:
        yield player


def test_the_walkthrough_runs_through_router_and_runtime(metacontroller_stack, namespace,
                                                         router, seed_kubelet):
    stack, front = metacontroller_stack, router
    stack.apply({"apiVersion": X, "kind": "SandboxTemplate", "metadata": {"name": TEMPLATE},
                 "spec": {"podTemplate": SEED_POD_TEMPLATE}}, namespace)
    stack.apply({"apiVersion": X, "kind": "SandboxWarmPool",
                 "metadata": {"name": "python-sandbox-warmpool"},
                 "spec": {"replicas": 2, "sandboxTemplateRef": {"name": TEMPLATE}}}, namespace)
    stack.wait_for("sandboxwarmpool", "python-sandbox-warmpool",
                   lambda p: (p.get("status") or {}).get("readyReplicas") == 2,
                   namespace=namespace, timeout=90)

    with SandboxClient(template_name=TEMPLATE, namespace=namespace, backend="kubernetes",
                       api_url=front["url"], router_token=front["token"],
                       kubeconfig=stack.plane.kubeconfig,
                       sandbox_ready_timeout=60) as sandbox:
        hello = sandbox.run("echo 'Hello from the sandboxed environment!'")
        assert hello.stdout == "Hello from the sandboxed environment!\n"
        assert hello.exit_code == 0
        sandbox.write("notes/result.txt", b"42\n")
        assert sandbox.read("notes/result.txt") == b"42\n"
        assert sandbox.exists("notes/result.txt")
        claims = stack.kubectl("get", "sandboxclaims", "-n", namespace, "-o",
                               "jsonpath={.items[*].metadata.name}").stdout.split()
        assert len(claims) == 1
        (claim,) = claims
        served = stack.get("sandbox", claim, namespace)["status"]["podName"]
        assert served.startswith("python-sandbox-warmpool-"), "served by a warm pod"
        # The bytes went to the runtime of exactly that pod, at its own address.
        workspace = seed_kubelet.running()[served].workspace
        assert (workspace / "notes" / "result.txt").read_bytes() == b"42\n"
        others = [r.workspace for name, r in seed_kubelet.running().items() if name != served]
        assert others and not any((w / "notes").exists() for w in others)

    stack.wait_gone("sandboxclaim", claim, namespace=namespace, timeout=30)
    stack.wait_gone("sandbox", claim, namespace=namespace, timeout=60)
    stack.wait_gone("pod", served, namespace=namespace, timeout=60)


def test_a_wrong_token_is_refused_by_the_router(metacontroller_stack, namespace, router):
    import requests

    answer = requests.post(f"{router['url']}/execute", json={"command": "true"},
                           headers={"X-Sandbox-ID": "anything", "X-Sandbox-Namespace": namespace,
                                    "Authorization": "Bearer wrong"}, timeout=10)
    assert answer.status_code == 401
