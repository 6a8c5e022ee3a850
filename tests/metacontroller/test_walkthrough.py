"""The seed walkthrough end to end on a real Metacontroller: client -> router -> runtime.

Our hooks under gunicorn and Metacontroller run the template, a warm pool of two and the
client's claim; the test plays the kubelet, giving every pod the loopback IP where a real
`sandbox-runtime` listens; a real `sandbox-router` resolves the sandbox from the API server
(its watch cache) and forwards to it; the real client creates the claim, waits for Ready,
sends its commands with the routing headers and the router's token, and deletes the claim.
Skipped (reason printed) unless METACONTROLLER_BIN names a Metacontroller binary.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic_sandbox import SandboxClient
from tests.hookrequests import SEED_POD_TEMPLATE
from tests.metacontroller.stack import Kubelet
from tests.support import free_port, script, serve

X = "extensions.agents.x-k8s.io/v1alpha1"
TEMPLATE = "python-runtime-template"


@pytest.fixture
def router_and_runtime(metacontroller_stack, namespace, tmp_path: Path
                       ) -> Iterator[dict[str, Any]]:
    stack = metacontroller_stack
    runtime_port, router_port = free_port(), free_port()
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    runtime = [script("sandbox-runtime"), "--host", "127.0.0.1", "--port", str(runtime_port),
               "--base-dir", str(workspace)]
    router = [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(router_port),
              "--source", "kubernetes", "--namespace", namespace, "--allow-loopback-pods",
              "--token-file", str(token_file)]
    api = stack.plane.api_client()
    kubelet = Kubelet(api, namespace)
    kubelet.start()
    try:
        with serve(runtime, runtime_port), \
                serve(router, router_port, env={"KUBECONFIG": str(stack.plane.kubeconfig)}):
            yield {"url": f"http://127.0.0.1:{router_port}", "token": token,
                   "port": runtime_port, "workspace": workspace}
    finally:
        kubelet.stop()
        api.close()


def test_the_walkthrough_runs_through_router_and_runtime(metacontroller_stack, namespace,
                                                         router_and_runtime):
    stack, front = metacontroller_stack, router_and_runtime
    pod_template = copy.deepcopy(SEED_POD_TEMPLATE)
    pod_template["spec"]["containers"][0]["ports"] = [{"containerPort": front["port"]}]
    stack.apply({"apiVersion": X, "kind": "SandboxTemplate", "metadata": {"name": TEMPLATE},
                 "spec": {"podTemplate": pod_template}}, namespace)
    stack.apply({"apiVersion": X, "kind": "SandboxWarmPool",
                 "metadata": {"name": "python-sandbox-warmpool"},
                 "spec": {"replicas": 2, "sandboxTemplateRef": {"name": TEMPLATE}}}, namespace)
    stack.wait_for("sandboxwarmpool", "python-sandbox-warmpool",
                   lambda p: (p.get("status") or {}).get("readyReplicas") == 2,
                   namespace=namespace, timeout=60)

    with SandboxClient(template_name=TEMPLATE, namespace=namespace, backend="kubernetes",
                       api_url=front["url"], router_token=front["token"],
                       kubeconfig=stack.plane.kubeconfig, server_port=front["port"],
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
    assert (front["workspace"] / "notes" / "result.txt").read_bytes() == b"42\n"

    stack.wait_gone("sandboxclaim", claim, namespace=namespace, timeout=30)
    stack.wait_gone("sandbox", claim, namespace=namespace, timeout=60)
    stack.wait_gone("pod", served, namespace=namespace, timeout=60)


def test_a_wrong_token_is_refused_by_the_router(metacontroller_stack, namespace,
                                                router_and_runtime):
    import requests

    answer = requests.post(f"{router_and_runtime['url']}/execute", json={"command": "true"},
                           headers={"X-Sandbox-ID": "anything", "X-Sandbox-Namespace": namespace,
                                    "Authorization": "Bearer wrong"}, timeout=10)
    assert answer.status_code == 401
