"""AsyncSandboxClient without sockets: the same calls as SandboxClient, the replay rule, the
error mapping, the background-process calls, and a cancelled open() that releases what the
backend acquired."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx2
import pytest

from agentic_sandbox import (
    AsyncSandboxClient,
    SandboxClient,
    SandboxConnectionError,
    SandboxRequestError,
)
from tests.unit.client_fakes import FakeBackend

EXEC_OK = {"stdout": "hi\n", "stderr": "", "exit_code": 0, "signal": None,
           "timed_out": False, "stdout_truncated": False, "stderr_truncated": False}


def test_async_and_sync_clients_send_the_same_requests():
    def handler(sent):
        return 200, EXEC_OK

    sync_backend, async_backend = FakeBackend(handler), FakeBackend(handler)
    with SandboxClient("tpl", backend=sync_backend) as sandbox:
        sync_result = sandbox.run("echo hi", timeout=3, env={"A": "1"}, cwd="sub")

    async def main():
        async with AsyncSandboxClient("tpl", backend=async_backend) as sandbox:
            return await sandbox.run("echo hi", timeout=3, env={"A": "1"}, cwd="sub")

    assert asyncio.run(main()) == sync_result
    sent_sync, sent_async = sync_backend.transport.requests, async_backend.transport.requests
    assert [(s.method, s.path_url, json.loads(s.body)) for s in sent_sync] == \
        [(s.method, s.path_url, json.loads(s.body)) for s in sent_async]
    assert sync_backend.transport.timeouts == async_backend.transport.timeouts
    assert async_backend.closed == 1 and async_backend.transport.closed


@pytest.mark.parametrize(("method", "error", "sent"), [
    ("GET", httpx2.ReadError("reset"), 2),       # a read is asked again
    ("POST", httpx2.ReadError("reset"), 1),      # a command may have run: never again
    ("POST", httpx2.ConnectError("refused"), 2),  # never left: sent again
])
def test_the_replay_rule_is_the_sync_client_s(method, error, sent):
    def handler(request):
        raise error

    backend = FakeBackend(handler)

    async def main():
        async with AsyncSandboxClient("tpl", backend=backend) as sandbox:
            if method == "GET":
                await sandbox.exists("x")
            else:
                await sandbox.run("true")

    with pytest.raises(SandboxConnectionError):
        asyncio.run(main())
    assert len(backend.transport.requests) == sent


def test_errors_map_as_in_the_sync_client():
    backend = FakeBackend(lambda sent: (403, {"error": "cwd: outside the workspace"}))

    async def main():
        async with AsyncSandboxClient("tpl", backend=backend) as sandbox:
            await sandbox.run("pwd", cwd="../..")

    with pytest.raises(SandboxRequestError) as caught:
        asyncio.run(main())
    assert caught.value.status_code == 403 and "outside the workspace" in str(caught.value)


def test_background_process_calls():
    info = {"id": "00112233aabbccdd", "command": "sleep 9", "running": True,
            "exit_code": None, "signal": None, "timed_out": False}
    ended = info | {"running": False, "exit_code": 137, "signal": "SIGKILL"}

    def handler(sent):
        table = {("POST", "/processes"): info,
                 ("GET", "/processes"): [info],
                 ("POST", "/processes/00112233aabbccdd/kill"): ended,
                 ("POST", "/processes/00112233aabbccdd/wait"): ended,
                 ("GET", "/processes/00112233aabbccdd/output"):
                     ended | {"stdout": "o", "stderr": "", "stdout_truncated": False,
                              "stderr_truncated": True}}
        return 200, table[(sent.method, sent.path_url)]

    backend = FakeBackend(handler)

    async def main():
        async with AsyncSandboxClient("tpl", backend=backend) as sandbox:
            process = await sandbox.start("sleep 9", timeout=5, env={"A": "1"})
            listed = await sandbox.processes()
            output = await process.output()
            waited = await process.wait(timeout=2)
            killed = await sandbox.process(process.id).kill()
            return process, listed, output, waited, killed

    process, listed, output, waited, killed = asyncio.run(main())
    assert process.id == "00112233aabbccdd" and listed[0].running
    assert (output.stdout, output.stderr_truncated, output.info.exit_code) == ("o", True, 137)
    assert (waited.exit_code, killed.signal) == (137, "SIGKILL")
    start, _, _, wait, _ = backend.transport.requests
    assert json.loads(start.body) == {"command": "sleep 9", "timeout": 5, "env": {"A": "1"}}
    assert 0 < json.loads(wait.body)["timeout"] <= 2


class SlowOpen(FakeBackend):
    """open() blocks until released: a cancelled AsyncSandboxClient.open() meanwhile."""

    def __init__(self):
        super().__init__(lambda sent: (200, EXEC_OK))
        self.may_finish = threading.Event()
        self.closed_event = threading.Event()

    def open(self):
        self.may_finish.wait(10)
        return super().open()

    def close(self):
        super().close()
        self.closed_event.set()


def test_a_cancelled_open_releases_the_backend_once_its_open_ends():
    backend = SlowOpen()

    async def main():
        client = AsyncSandboxClient("tpl", backend=backend)
        task = asyncio.ensure_future(client.open())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        backend.may_finish.set()  # the backend's open() ends after the cancellation
        for _ in range(200):
            if backend.closed_event.is_set():
                break
            await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError):
            await client.open()  # closed for good, as a failed sync open()

    asyncio.run(main())
    assert backend.opened == 1 and backend.closed == 1 and backend.transport.closed


def test_a_backend_without_async_transport_is_refused_clearly():
    class SyncOnly(FakeBackend):
        def open(self):
            endpoint = super().open()
            from dataclasses import replace
            return replace(endpoint, async_transport=None)

    backend = SyncOnly(lambda sent: (200, EXEC_OK))

    async def main():
        async with AsyncSandboxClient("tpl", backend=backend):
            pass

    with pytest.raises(Exception, match="no async transport"):
        asyncio.run(main())
    assert backend.closed == 1
