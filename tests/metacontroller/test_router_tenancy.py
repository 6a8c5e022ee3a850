"""A re-created claim's first requests through the real router reach its own pod, never the
previous tenant's, while the router's watch lags (the real loop: kube-apiserver,
Metacontroller, our hooks, the kubelet stand-in with a real runtime per pod).

Claim `tenant` is deleted and created again, repeatedly (0, 50, 200 and 1000 ms between the
two), and requests go through the router as soon as the new claim is Ready. The previous
tenant's pod keeps serving for its grace period (30 s), each pod's runtime has its own loopback
address and workspace, and the router's watch is held back for the whole run (its testing
option `test_watch_hold_file`), so its cache shows an older tenant and the stale window is
there in every trial, not by luck. Each answer must come from the new pod (its workspace, as
`pwd` prints it, and the tenant's own marker file) or be the documented refusal (503 with
Retry-After); the previous tenant's marker must never change.

Two kinds of client: ours (agentic_sandbox's Kubernetes backend, which sends X-Sandbox-UID),
and a walkthrough-era one (plain requests with X-Sandbox-ID/-Namespace/-Port and the token,
waiting for the Sandbox to be Ready as agentic_sandbox v0.1.0 does): on a fresh connection to
a router with the opt-in `--name-confirmation connection`, and on one connection kept across
all trials to the default router (a read per name-only request).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from agentic_sandbox import ClaimFailedError, SandboxClient
from agentic_sandbox._backends.kubernetes import KubernetesBackend
from agentic_sandbox._options import KubernetesOptions
from testbed.kubelet import Kubelet
from testbed.support import free_port, script, serve
from tests.metacontroller import objects

NAME = "tenant"
GRACE = 30  # the old pod serves, terminating, for the whole trial
DELAYS = (0.0, 0.05, 0.2, 1.0)
ROUNDS = 2
SANDBOXES = ("agents.x-k8s.io", "v1alpha1", "sandboxes")
CLAIMS = ("extensions.agents.x-k8s.io", "v1alpha1", "sandboxclaims")


@dataclass
class Routers:
    """Two real routers over one held watch: the opt-in connection mode, and the default
    (request)."""

    connection: str
    request: str
    token: str
    hold: Path

    def reads(self, url: str, reason: str) -> float:
        """sandbox_router_sandbox_reads_total{reason, result="found"} of one router."""
        prefix = f'sandbox_router_sandbox_reads_total{{reason="{reason}",result="found"}} '
        for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix):])
        return 0.0


@pytest.fixture
def routers(metacontroller_stack, namespace, tmp_path: Path) -> Iterator[Routers]:
    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    hold = tmp_path / "hold-watch"
    env = {"KUBECONFIG": str(metacontroller_stack.plane.kubeconfig),
           "SANDBOX_ROUTER_TEST_WATCH_HOLD_FILE": str(hold),
           "SANDBOX_ROUTER_ACCESS_LOG": "false"}
    ports = free_port(), free_port()

    def argv(port: int, *extra: str) -> list[str]:
        return [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(port),
                "--source", "kubernetes", "--namespace", namespace, "--allow-loopback-pods",
                "--token-file", str(tmp_path / "token"), *extra]

    with serve(argv(ports[0], "--name-confirmation", "connection"), ports[0], env=env), \
            serve(argv(ports[1]), ports[1], env=env):
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            deadline = time.monotonic() + 30
            while requests.get(url + "/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "router cache never synced"
                time.sleep(0.1)
        yield Routers(connection=urls[0], request=urls[1], token=token, hold=hold)


@pytest.fixture
def world(metacontroller_stack, namespace, kubelet: Kubelet):
    stack = metacontroller_stack
    stack.apply(objects.template(grace=GRACE), namespace)
    stack.apply(objects.pool(replicas=2), namespace)
    stack.wait_for("sandboxwarmpool", objects.POOL, objects.pool_ready(2), namespace=namespace,
                   timeout=90)
    api = stack.plane.api_client()
    from kubernetes import client

    yield client.CustomObjectsApi(api)
    api.close()


class Tenant:
    """One tenant of the name: its Sandbox uid, pod and that pod's workspace."""

    def __init__(self, sandbox: dict[str, Any], kubelet: Kubelet) -> None:
        self.uid = sandbox["metadata"]["uid"]
        self.pod = sandbox["status"]["podName"]
        self.workspace = os.path.realpath(kubelet.running()[self.pod].workspace)

    def marker(self) -> str | None:
        path = Path(self.workspace) / "tenant.txt"
        return path.read_text() if path.exists() else None


def sandbox_ready(custom: Any, namespace: str, not_uid: str | None,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Poll (as closely as a watch would) until Sandbox NAME is Ready with a uid other than
    `not_uid`: what a walkthrough-era client waits for."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ApiException):
            obj = custom.get_namespaced_custom_object(*SANDBOXES[:2], namespace, SANDBOXES[2],
                                                      NAME)
            if obj["metadata"]["uid"] != not_uid and objects.is_ready(obj):
                return dict(obj)
        assert time.monotonic() < deadline, f"Sandbox {NAME} not Ready in {timeout:.0f}s"
        time.sleep(0.01)


def recreate(custom: Any, namespace: str, delay: float) -> None:
    from kubernetes.client.exceptions import ApiException

    custom.delete_namespaced_custom_object(*CLAIMS[:2], namespace, CLAIMS[2], NAME)
    time.sleep(delay)
    for _ in range(500):
        try:
            custom.create_namespaced_custom_object(*CLAIMS[:2], namespace, CLAIMS[2],
                                                   objects.claim(NAME))
            return
        except ApiException as exc:
            if exc.status != 409:  # the previous claim is still being deleted
                raise
            time.sleep(0.01)
    raise AssertionError(f"claim {NAME} could not be created again")


def execute(session: requests.Session, url: str, headers: dict[str, str], command: str,
            tenant: Tenant, seen: list[str]) -> str:
    """POST /execute until it is answered by a pod; every answer must be the new tenant's pod
    or the documented refusal. Returns the command's stdout after the `pwd` line."""
    deadline = time.monotonic() + 60
    while True:
        answer = session.post(url + "/execute", json={"command": f"pwd; {command}"},
                              headers=headers, timeout=30)
        seen.append(f"{answer.status_code}")
        if answer.status_code == 200:
            workspace, _, rest = answer.json()["stdout"].partition("\n")
            assert workspace == tenant.workspace, (
                f"answered by the pod whose workspace is {workspace}, not the new tenant's "
                f"{tenant.pod} ({tenant.workspace})")
            return rest
        assert answer.status_code == 503, f"{answer.status_code} {answer.text}"
        assert answer.headers.get("Retry-After") == "1" and "error" in answer.json()
        assert time.monotonic() < deadline, f"still refused after 60 s: {answer.text}"
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_walkthrough_era_clients_reach_only_the_new_tenants_pod(
        metacontroller_stack, namespace, kubelet, routers, world):
    custom = world
    plain = {"X-Sandbox-ID": NAME, "X-Sandbox-Namespace": namespace, "X-Sandbox-Port": "8888",
             "Authorization": f"Bearer {routers.token}"}
    custom.create_namespaced_custom_object(*CLAIMS[:2], namespace, CLAIMS[2],
                                           objects.claim(NAME))
    previous = Tenant(sandbox_ready(custom, namespace, None), kubelet)
    kept = requests.Session()  # one keep-alive connection across every trial
    seen: list[str] = []
    execute(kept, routers.request, plain, f"printf {previous.uid} > tenant.txt", previous, seen)
    routers.hold.touch()  # from here on, the routers' caches learn nothing from their watch
    before = routers.reads(routers.connection, "connection")
    trials = 0
    try:
        for delay in DELAYS * ROUNDS:
            recreate(custom, namespace, delay)
            tenant = Tenant(sandbox_ready(custom, namespace, previous.uid), kubelet)
            # First request: a walkthrough-era client, its own fresh connection.
            with requests.Session() as fresh:
                assert execute(fresh, routers.connection, plain,
                               f"cat tenant.txt 2>/dev/null; printf {tenant.uid} > tenant.txt",
                               tenant, seen) == ""
            # The same client style on the connection it kept from the first tenant on.
            assert execute(kept, routers.request, plain, "cat tenant.txt", tenant,
                           seen) == tenant.uid
            # What our client sends: the uid, on that kept connection, to the other router.
            with_uid = {**plain, "X-Sandbox-UID": tenant.uid}
            assert execute(kept, routers.connection, with_uid, "cat tenant.txt", tenant,
                           seen) == tenant.uid
            # The previous tenant's pod was still there, serving, the whole time.
            assert previous.pod in kubelet.running(), "the stale window closed early"
            assert previous.marker() == previous.uid
            trials += 1
            previous = tenant
    finally:
        routers.hold.unlink(missing_ok=True)
        kept.close()
    assert trials == len(DELAYS) * ROUNDS
    # The stale cache was met: the connection router had to read for each fresh connection.
    assert routers.reads(routers.connection, "connection") - before >= trials
    print(f"\n{trials} re-creations; answers: {len(seen)} "
          f"({seen.count('200')} served by the new pod, {seen.count('503')} refused 503)")


@pytest.mark.timeout(900)
def test_our_client_reaches_only_its_own_pod_through_a_lagging_router(
        metacontroller_stack, namespace, kubelet, routers, world):
    custom = world

    def client() -> SandboxClient:
        options = KubernetesOptions(api_url=routers.connection, router_token=routers.token,
                                    kubeconfig=metacontroller_stack.plane.kubeconfig)
        backend = KubernetesBackend(objects.TEMPLATE, namespace, claim=NAME,
                                    options=options, ready_timeout=60)
        return SandboxClient(objects.TEMPLATE, namespace, backend=backend)

    def opened() -> SandboxClient:
        for _ in range(300):
            try:
                return client().open()
            except ClaimFailedError as exc:
                if exc.reason != "AlreadyExists":  # the previous claim is still going
                    raise
                time.sleep(0.02)
        raise AssertionError(f"claim {NAME} could not be created again")

    previous: Tenant | None = None
    before = 0.0
    trials = 0
    try:
        # The first tenant is made while the watch still flows, so the routers' caches know
        # it; from then on they learn nothing from their watch.
        for delay in (None, *DELAYS):
            with opened() as sandbox:
                uid = sandbox.backend.sandbox_uid  # type: ignore[attr-defined]
                current = custom.get_namespaced_custom_object(*SANDBOXES[:2], namespace,
                                                              SANDBOXES[2], NAME)
                assert uid == current["metadata"]["uid"]
                tenant = Tenant(current, kubelet)
                first = sandbox.run("pwd; cat tenant.txt 2>/dev/null; true")
                assert first.stdout == tenant.workspace + "\n", (
                    f"answered by {first.stdout!r}, not {tenant.pod} ({tenant.workspace})")
                sandbox.write("tenant.txt", uid.encode())
                assert sandbox.read("tenant.txt") == uid.encode()
                assert tenant.marker() == uid
                if previous is not None:
                    assert previous.pod in kubelet.running(), "the stale window closed early"
                    assert previous.marker() == previous.uid
                    trials += 1
                previous = tenant
            if delay is None:
                routers.hold.touch()
                before = routers.reads(routers.connection, "uid")
            else:
                time.sleep(delay)
    finally:
        routers.hold.unlink(missing_ok=True)
    assert trials == len(DELAYS)
    # Each new tenant's uid was unknown to the held cache: the router had to read it.
    assert routers.reads(routers.connection, "uid") - before >= trials
