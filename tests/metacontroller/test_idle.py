"""Idle sandboxes on the real loop: a Sandbox with an idle timeout suspends (its pod goes, its
Service, name and volume stay), and the next request through the real router wakes it and is
answered, with the files of its volume intact; concurrent requests to a suspended Sandbox
share one wake; the client's run() on a suspended claim just works, also when the router's
wake bound passes first (a 503 with Retry-After, which the client sends again, once run).

kube-apiserver, Metacontroller, our hooks under gunicorn, a real `sandbox-router` (Kubernetes
source) and the kubelet stand-in with a real `sandbox-runtime` per pod (a volume's host
directory is kept across pods, as a PersistentVolume is). Every Sandbox event is recorded:
Ready=True is never reported beside Suspended=True.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agentic_sandbox import SandboxClient
from testbed.metacontroller import MetacontrollerStack
from testbed.support import free_port, script, serve
from testbed.tenancy import Recorder, recorded
from tests.metacontroller import objects

IDLE = "3s"


@contextlib.contextmanager
def running_router(stack: MetacontrollerStack, namespace: str, tmp_path: Path, *,
                   wake_timeout: str) -> Iterator[dict[str, Any]]:
    port = free_port()
    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    argv = [script("sandbox-router"), "--host", "127.0.0.1", "--port", str(port),
            "--source", "kubernetes", "--namespace", namespace, "--allow-loopback-pods",
            "--token-file", str(tmp_path / "token")]
    env = {"KUBECONFIG": str(stack.plane.kubeconfig),
           "SANDBOX_ROUTER_ACCESS_LOG": "false", "SANDBOX_ROUTER_WAKE_TIMEOUT": wake_timeout}
    with serve(argv, port, env=env):
        yield {"url": f"http://127.0.0.1:{port}", "token": token}


@pytest.fixture
def router(metacontroller_stack: MetacontrollerStack, namespace: str,
           tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_router(metacontroller_stack, namespace, tmp_path, wake_timeout="60") as r:
        yield r


@pytest.fixture
def recorder(metacontroller_stack: MetacontrollerStack, namespace: str) -> Iterator[Recorder]:
    api = metacontroller_stack.plane.api_client()
    with recorded(api, namespace) as events:
        yield events
    api.close()


def execute(router: dict[str, Any], namespace: str, name: str, command: str,
            session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(
        f"{router['url']}/execute", json={"command": command}, timeout=90,
        headers={"X-Sandbox-ID": name, "X-Sandbox-Namespace": namespace,
                 "Authorization": f"Bearer {router['token']}"})


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def suspended(obj: dict[str, Any]) -> bool:
    return condition(obj, "Suspended").get("status") == "True"


def never_ready_while_suspended(recorder: Recorder) -> list[dict[str, Any]]:
    """The recorded Sandbox states, checked: Ready=True never beside Suspended=True."""
    states = [e.obj for e in recorder.snapshot() if e.kind == "Sandbox"]
    for obj in states:
        assert not (objects.is_ready(obj) and suspended(obj)), obj["status"]
    return states


def wakes(router: dict[str, Any], result: str = "written") -> float:
    prefix = f'sandbox_router_wakes_total{{result="{result}"}} '
    for line in requests.get(router["url"] + "/metrics", timeout=5).text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def serving_pods(recorder: Recorder, uid: str) -> set[str]:
    """Uids of every pod ever labelled as serving the Sandbox `uid`."""
    return {e.obj["metadata"]["uid"] for e in recorder.snapshot()
            if e.kind == "Pod"
            and (e.obj["metadata"].get("labels") or {}).get(objects.SANDBOX_UID_LABEL) == uid}


def test_an_idle_sandbox_sleeps_and_a_request_wakes_it_with_its_volume_intact(
        metacontroller_stack, namespace, kubelet, router, recorder):
    stack = metacontroller_stack
    stack.apply(objects.sandbox("sleepy", idleTimeout=IDLE), namespace)
    box = stack.wait_for("sandbox", "sleepy", objects.is_ready, namespace=namespace, timeout=60)
    first_pod = box["status"]["podName"]
    wrote = execute(router, namespace, "sleepy", "echo 42 > kept.txt")
    assert wrote.status_code == 200, wrote.text
    assert wrote.json()["exit_code"] == 0
    first_runtime = kubelet.running()[first_pod]

    box = stack.wait_for("sandbox", "sleepy", suspended, namespace=namespace, timeout=60)
    assert objects.reason(box) == "Suspended"
    assert condition(box, "Suspended")["reason"] == "Idle"
    assert "podName" not in box["status"]
    stack.wait_gone("pod", first_pod, namespace=namespace, timeout=60)
    assert stack.get("service", "sleepy", namespace) is not None, "the Service stays"
    assert stack.get("persistentvolumeclaim", "workspace-sleepy", namespace) is not None
    assert kubelet.running() == {}, "no runtime runs for a sleeping sandbox"

    answer = execute(router, namespace, "sleepy", "cat kept.txt")
    assert answer.status_code == 200, answer.text
    assert answer.json()["stdout"] == "42\n", "the volume's files survive"
    box = stack.get("sandbox", "sleepy", namespace)
    # Processes do not: another pod (same name, new uid), another runtime process.
    (now_running,) = kubelet.running().values()
    assert now_running.uid != first_runtime.uid
    assert now_running.process.pid != first_runtime.process.pid
    assert objects.is_ready(box)
    assert condition(box, "Suspended")["status"] == "False"
    assert condition(box, "Suspended")["reason"] == "Resumed"
    states = never_ready_while_suspended(recorder)
    assert any(suspended(s) for s in states)

    # `kubectl describe sandbox sleepy` tells the story: the router recorded it as Events.
    def story() -> list[str]:
        listed = stack.kubectl("get", "events", "-n", namespace, "-o", "json",
                               "--field-selector", "involvedObject.name=sleepy").stdout
        events = sorted(json.loads(listed)["items"],
                        key=lambda e: (e["firstTimestamp"], e["metadata"]["creationTimestamp"]))
        return [e["reason"] for e in events if e["source"].get("component") == "sandbox-router"]

    told = objects.eventually(
        lambda: (lambda r: r if {"Suspended", "Resumed"} <= set(r) else None)(story()), 30)
    assert told.count("StartedPod") == 2, told  # a cold pod before, and another after the wake
    assert {"Created", "Ready", "Suspended", "Resumed"} <= set(told), told
    assert told.index("Suspended") < told.index("Resumed"), told


def test_concurrent_requests_to_a_suspended_claim_share_one_wake_and_the_client_just_works(
        metacontroller_stack, namespace, kubelet, router, recorder):
    stack = metacontroller_stack
    template = objects.template()
    template["spec"]["idleTimeout"] = IDLE
    stack.apply(template, namespace)
    stack.apply(objects.pool(2), namespace)
    stack.wait_for("sandboxwarmpool", objects.POOL, objects.pool_ready(2), namespace=namespace,
                   timeout=90)

    with SandboxClient(template_name=objects.TEMPLATE, namespace=namespace,
                       backend="kubernetes", api_url=router["url"],
                       router_token=router["token"], kubeconfig=stack.plane.kubeconfig,
                       sandbox_ready_timeout=60) as sandbox:
        assert sandbox.run("echo hello").stdout == "hello\n"
        (claim,) = [c["metadata"]["name"] for c in stack.list("sandboxclaim", namespace)]
        box = stack.get("sandbox", claim, namespace)
        assert box["spec"]["idleTimeout"] == IDLE, "from the template"
        uid = box["metadata"]["uid"]
        stack.wait_for("sandbox", claim, suspended, namespace=namespace, timeout=60)
        before = serving_pods(recorder, uid)
        assert len(before) == 1

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(
                lambda i: execute(router, namespace, claim, f"echo {i}"), range(10)))
        assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
        assert sorted(a.json()["stdout"] for a in answers) == sorted(f"{i}\n" for i in range(10))
        assert wakes(router) == 1, "one wake for ten requests"
        after = serving_pods(recorder, uid) - before
        assert len(after) == 1, "exactly one new pod serves it"
        resumes = [e for e in recorder.snapshot() if e.kind == "Sandbox"
                   and condition(e.obj, "Suspended").get("reason") == "Resumed"]
        assert len({condition(e.obj, "Suspended")["lastTransitionTime"] for e in resumes}) == 1

        # Asleep again: the client's own run() wakes it.
        stack.wait_for("sandbox", claim, suspended, namespace=namespace, timeout=60)
        assert sandbox.run("echo again").stdout == "again\n"
        assert wakes(router) == 2
    never_ready_while_suspended(recorder)


def test_the_client_sends_a_command_again_after_the_router_s_wake_bound_and_it_runs_once(
        metacontroller_stack, namespace, kubelet, recorder, tmp_path):
    """The router gives up on each wait after 0.05 s (a 503 with Retry-After, marked as
    forwarded nowhere): the client's run() still gets the command's answer, run once."""
    stack = metacontroller_stack
    template = objects.template()
    template["spec"]["idleTimeout"] = IDLE
    stack.apply(template, namespace)
    with running_router(stack, namespace, tmp_path, wake_timeout="0.05") as router, \
            SandboxClient(template_name=objects.TEMPLATE, namespace=namespace,
                          backend="kubernetes", api_url=router["url"],
                          router_token=router["token"], kubeconfig=stack.plane.kubeconfig,
                          sandbox_ready_timeout=60) as sandbox:
        assert sandbox.run("echo hello").stdout == "hello\n"
        (claim,) = [c["metadata"]["name"] for c in stack.list("sandboxclaim", namespace)]
        stack.wait_for("sandbox", claim, suspended, namespace=namespace, timeout=60)
        result = sandbox.run("echo once >> ran && cat ran")
        assert (result.exit_code, result.stdout) == (0, "once\n")
        assert wakes(router, "timeout") >= 1, "the router answered 503 at least once"
        assert wakes(router) == 1
    never_ready_while_suspended(recorder)
