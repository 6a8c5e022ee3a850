"""The Kubernetes backend against a real kube-apiserver, a real sandbox-router and a real runtime.

The test plays the controller's part (no Metacontroller here): a thread watches the
namespace's SandboxClaims and marks each Ready with `status.sandbox.name`, or fails it with a
terminal reason. The client reaches the runtime (sandbox-runtime on 127.0.0.1) through the
router (static source, loopback allowed, bearer token) in direct `api_url` mode, and through
`kubectl port-forward` in tunnel mode. Claim names come from a fixed list so the router's
static file can name them in advance.
"""

from __future__ import annotations

import datetime
import importlib.util
import threading
import time
import uuid

import pytest
import yaml

from agentic_sandbox import (
    ClaimFailedError,
    SandboxClient,
    SandboxConnectionError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from agentic_sandbox._backends import claims as claim_api
from testbed.support import REPO, free_port, script, serve

TOKEN = "client-test-token-0123456789abcdef"
TEMPLATE = "python-runtime-template"
NAMES = [f"sandbox-claim-k8s-{i}" for i in range(14)]
GROUP, VERSION, PLURAL = "extensions.agents.x-k8s.io", "v1alpha1", "sandboxclaims"


def missing_pieces() -> list[str]:
    missing = []
    for module in ("sandbox_router", "sandbox_runtime", "kubernetes", "aiohttp", "flask"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    if not (REPO / "manifests" / "crds" / "sandboxclaims.extensions.agents.x-k8s.io.yaml"
            ).exists():
        missing.append("manifests/crds (SandboxClaim CRD)")
    return missing


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory):
    missing = missing_pieces()
    assert not missing, f"missing for the client's Kubernetes test: {', '.join(missing)}"
    tmp = tmp_path_factory.mktemp("client-k8s")
    namespace = f"client-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    template = yaml.safe_load_all(
        (REPO / "agentic_sandbox" / "templates" / "python-runtime-template.yaml").read_text())
    doc = next(iter(template))
    doc["metadata"]["namespace"] = namespace
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    workspace = tmp / "workspace"
    workspace.mkdir()
    runtime_port, router_port = free_port(), free_port()
    static = tmp / "sandboxes.yaml"
    static.write_text(yaml.safe_dump({"allow_loopback": True, "sandboxes": {
        f"{namespace}/{name}": {"addresses": ["127.0.0.1"], "ports": [runtime_port]}
        for name in NAMES}}))
    runtime_argv = [script("sandbox-runtime"), "--host", "127.0.0.1", "--port",
                    str(runtime_port), "--base-dir", str(workspace)]
    router_argv = [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(router_port),
                   "--static-file", str(static)]
    with serve(runtime_argv, runtime_port), \
            serve(router_argv, router_port, env={"SANDBOX_ROUTER_TOKEN": TOKEN}):
        yield {"namespace": namespace, "api_url": f"http://127.0.0.1:{router_port}",
               "runtime_port": runtime_port,
               "workspace": workspace, "plane": control_plane}
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def names(monkeypatch):
    """Claim names from NAMES, in order, so the router's static file knows them."""
    pool = iter(NAMES)
    issued: list[str] = []

    def next_name() -> str:
        name = next(pool)
        issued.append(name)
        return name

    monkeypatch.setattr(claim_api, "claim_name", next_name)
    return issued


class Controller:
    """Plays the claim controller: sets Ready (or a failure) on every new claim."""

    def __init__(self, plane, namespace: str, *, reason: str | None = None,
                 delay: float = 0.3) -> None:
        from kubernetes import client
        self.api_client = plane.api_client()
        self.api = client.CustomObjectsApi(self.api_client)
        self.namespace = namespace
        self.reason = reason
        self.delay = delay
        self.stop = threading.Event()
        self.handled: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Controller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        self.api_client.close()

    def run(self) -> None:
        while not self.stop.is_set():
            claims = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            PLURAL)
            for claim in claims.get("items", []):
                name = claim["metadata"]["name"]
                if name in self.handled:
                    continue
                time.sleep(self.delay)  # the client must wait, not find it ready at once
                self.handled.append(name)
                now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if self.reason is None:
                    condition = {"type": "Ready", "status": "True", "reason": "SandboxReady",
                                 "message": "ready", "lastTransitionTime": now}
                    status = {"conditions": [condition], "sandbox": {"name": name}}
                else:
                    condition = {"type": "Ready", "status": "False", "reason": self.reason,
                                 "message": "test says no", "lastTransitionTime": now}
                    status = {"conditions": [condition]}
                self.api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, self.namespace, PLURAL, name, {"status": status})
            self.stop.wait(0.05)


def claims(stack) -> list[str]:
    out = stack["plane"].kubectl("get", "sandboxclaims", "-n", stack["namespace"], "-o",
                                 "name")
    return [line.split("/", 1)[1] for line in out.stdout.split()]


def client(stack, **kwargs) -> SandboxClient:
    options = {"backend": "kubernetes", "api_url": stack["api_url"], "router_token": TOKEN,
               "kubeconfig": stack["plane"].kubeconfig, "sandbox_ready_timeout": 60,
               "server_port": stack["runtime_port"]}
    options.update(kwargs)
    return SandboxClient(TEMPLATE, stack["namespace"], **options)


def test_claim_ready_route_run_files_and_delete(stack, names):
    with Controller(stack["plane"], stack["namespace"]) as controller, \
            client(stack) as sandbox:
        claim = names[-1]
        assert sandbox.sandbox_name == claim
        assert claim in claims(stack) and controller.handled == [claim]
        created = stack["plane"].kubectl("get", "sandboxclaim", claim, "-n",
                                         stack["namespace"], "-o", "yaml").stdout
        assert yaml.safe_load(created)["spec"] == {"sandboxTemplateRef": {"name": TEMPLATE}}
        result = sandbox.run("echo 'Hello from the sandboxed environment!'")
        assert result.stdout == "Hello from the sandboxed environment!\n"
        sandbox.write("via-router.txt", b"routed")
        assert (stack["workspace"] / "via-router.txt").read_bytes() == b"routed"
        assert sandbox.read("via-router.txt") == b"routed"
        assert sandbox.exists("via-router.txt")
        with sandbox.stream("echo a; echo b") as stream:
            assert "".join(c.data for c in stream) == "a\nb\n"
        assert stream.exit_code == 0
    assert claim not in claims(stack)


def test_the_async_client_claims_routes_and_deletes(stack, names):
    """AsyncSandboxClient on Kubernetes: the claim made and watched in a thread, every
    call through the router on httpx's async transport, a background process started,
    read and killed through it, the claim deleted on exit."""
    import asyncio

    from agentic_sandbox import AsyncSandboxClient

    async def main():
        options = {"backend": "kubernetes", "api_url": stack["api_url"],
                   "router_token": TOKEN, "kubeconfig": stack["plane"].kubeconfig,
                   "sandbox_ready_timeout": 60, "server_port": stack["runtime_port"]}
        async with AsyncSandboxClient(TEMPLATE, stack["namespace"], **options) as sandbox:
            ran = await sandbox.run("echo routed; kill -TERM $$")
            await sandbox.write("via-async.txt", b"async")
            async with sandbox.stream("echo a; echo b") as stream:
                streamed = "".join([c.data async for c in stream])
            process = await sandbox.start("echo bg; sleep 4249301")
            for _ in range(100):
                if (await process.output()).stdout:
                    break
                await asyncio.sleep(0.05)
            killed = await process.kill()
            return (sandbox.sandbox_name, ran, await sandbox.read("via-async.txt"),
                    streamed, (await process.output()).stdout, killed)

    with Controller(stack["plane"], stack["namespace"]):
        name, ran, read, streamed, bg, killed = asyncio.run(main())
    assert name == names[-1]
    assert (ran.stdout, ran.exit_code, ran.signal) == ("routed\n", 143, "SIGTERM")
    assert (read, streamed, bg) == (b"async", "a\nb\n", "bg\n")
    assert (killed.exit_code, killed.signal) == (137, "SIGKILL")
    assert name not in claims(stack)


def test_missing_template_fails_before_creating_a_claim(stack, names):
    before = claims(stack)
    with pytest.raises(TemplateNotFoundError), \
            SandboxClient("no-such-template", stack["namespace"], backend="kubernetes",
                          api_url=stack["api_url"], kubeconfig=stack["plane"].kubeconfig):
        pass
    assert claims(stack) == before and names == []


@pytest.mark.parametrize("reason", ["InvalidSpec", "TemplateNotFound"])
def test_terminal_reason_fails_fast_and_deletes_the_claim(stack, names, reason):
    with Controller(stack["plane"], stack["namespace"], reason=reason):
        start = time.monotonic()
        with pytest.raises(ClaimFailedError) as info, client(stack, sandbox_ready_timeout=60):
            pass
        assert time.monotonic() - start < 30  # far below the 60 s ready timeout
    assert info.value.reason == reason and reason in str(info.value)
    assert names[-1] not in claims(stack)


def test_not_ready_in_time_is_a_timeout_and_deletes_the_claim(stack, names):
    with pytest.raises(SandboxTimeoutError, match="not Ready"), \
            client(stack, sandbox_ready_timeout=2):
        pass
    assert names[-1] not in claims(stack)


def test_wrong_router_token_is_refused_and_cleans_up(stack, names):
    with Controller(stack["plane"], stack["namespace"]), \
            pytest.raises(SandboxConnectionError, match="router_token"), \
            client(stack, router_token="wrong-token-wrong-token"):
        pass
    assert names[-1] not in claims(stack)


def test_two_clients_get_their_own_claims(stack, names):
    with Controller(stack["plane"], stack["namespace"]), client(stack) as a, \
            client(stack) as b:
        assert a.sandbox_name != b.sandbox_name
        assert sorted(claims(stack)) == sorted([a.sandbox_name, b.sandbox_name])
    assert claims(stack) == []


def test_tunnel_mode_needs_the_router_service(stack, names):
    # No Service/pods exist for the router in this API-server-only cluster, so
    # `kubectl port-forward svc/sandbox-router-svc` must fail cleanly: error, claim deleted.
    with Controller(stack["plane"], stack["namespace"]), \
            pytest.raises((SandboxConnectionError, SandboxTimeoutError)), \
            client(stack, api_url=None, connection="tunnel", sandbox_ready_timeout=20):
        pass
    assert names[-1] not in claims(stack)

