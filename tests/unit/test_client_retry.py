"""The client after a 503 with Retry-After (a sandbox waking up behind the router): the rule in
agentic_sandbox._protocol.retry_wait, and both clients following it without sockets.

A GET is sent again after any such 503; a POST only when the router marked the answer as its
own, given before anything was forwarded (NOT_FORWARDED_HEADER): a command never runs twice.
Each wait honours Retry-After within bounds, and the waits end within sandbox_ready_timeout.
The same story on the real loop: tests/metacontroller/test_idle.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from agentic_sandbox import AsyncSandboxClient, SandboxClient, SandboxConnectionError
from agentic_sandbox._protocol import (
    MAX_RETRY_WAIT_S,
    MIN_RETRY_WAIT_S,
    command_call,
    health_call,
    retry_wait,
)
from agentic_sandbox._protocol_files import upload_call
from sandbox_common.contract import NOT_FORWARDED_HEADER, SANDBOX_ID_HEADER
from tests.unit.client_fakes import FakeBackend

EXEC_OK = {"stdout": "hi\n", "stderr": "", "exit_code": 0, "signal": None,
           "timed_out": False, "stdout_truncated": False, "stderr_truncated": False}
WAKING = {"error": "sandbox default/s is waking up and was not ready within 10s; try again"}
NOW = 1_800_000_000.0
MARKED = {"Retry-After": "1", NOT_FORWARDED_HEADER: "true"}
ROUTED = {SANDBOX_ID_HEADER: "s"}  # the endpoint is the router


def wait(call, headers, status=503, *, elapsed=0.0, budget=60.0):
    return retry_wait(call, status, headers, elapsed=elapsed, budget=budget, now=NOW)


RUN = command_call("true", 5, None, None)
STREAM = command_call("true", 5, None, None, stream=True)
UPLOAD = upload_call("f", b"x", 5)
HEALTH = health_call(5)


@pytest.mark.parametrize(("call", "headers", "expected"), [
    (RUN, MARKED, 1.0),                                     # the router forwarded nothing
    (STREAM, MARKED, 1.0),
    (UPLOAD, MARKED, 1.0),
    (RUN, {"retry-after": "1"}, None),                      # may come from the sandbox
    (RUN, {NOT_FORWARDED_HEADER: "true"}, None),    # no Retry-After: not a wait
    (RUN, {**MARKED, NOT_FORWARDED_HEADER: "1"}, None),  # only the router's value
    (HEALTH, {"retry-after": "2"}, 2.0),                    # a GET: asking again is safe
    (HEALTH, {"retry-after": "600"}, MAX_RETRY_WAIT_S),     # bounded
    (HEALTH, {"retry-after": "0"}, MIN_RETRY_WAIT_S),       # never a tight loop
    (HEALTH, {"retry-after": "soon"}, None),                # unreadable
    (HEALTH, {"retry-after": "-1"}, None),
    (HEALTH, {"retry-after": format_datetime(datetime.fromtimestamp(NOW + 3, UTC),
                                             usegmt=True)}, 3.0),
])
def test_the_rule(call, headers, expected):
    assert wait(call, headers) == pytest.approx(expected) if expected else \
        wait(call, headers) is None


@pytest.mark.parametrize("status", [200, 429, 500, 502, 504])
def test_only_a_503_is_waited_for(status):
    assert wait(HEALTH, MARKED, status) is None


def test_no_wait_ends_past_the_budget():
    assert wait(RUN, MARKED, elapsed=58.5, budget=60) == 1.0
    assert wait(RUN, MARKED, elapsed=59.5, budget=60) is None


def waking_once(answers: int = 1):
    """A handler: the router's marked 503 for the first `answers` requests, then the runtime."""
    def handler(sent):
        if handler.left:
            handler.left -= 1
            return 503, WAKING, MARKED
        return 200, EXEC_OK
    handler.left = answers
    return handler


def test_run_on_a_waking_sandbox_just_works_and_the_command_runs_once():
    backend = FakeBackend(waking_once(2), headers=ROUTED)
    with SandboxClient("tpl", backend=backend) as sandbox:
        assert sandbox.run("echo hi").stdout == "hi\n"
    assert [s.method for s in backend.transport.requests] == ["POST"] * 3


def test_the_async_client_follows_the_same_rule():
    backend = FakeBackend(waking_once(1), headers=ROUTED)

    async def main():
        async with AsyncSandboxClient("tpl", backend=backend) as sandbox:
            return await sandbox.run("echo hi")

    assert asyncio.run(main()).stdout == "hi\n"
    assert len(backend.transport.requests) == 2


def test_a_503_without_the_router_s_mark_fails_a_command_at_once():
    backend = FakeBackend(lambda sent: (503, {"error": "busy"}, {"Retry-After": "1"}),
                          headers=ROUTED)
    with SandboxClient("tpl", backend=backend) as sandbox, \
            pytest.raises(SandboxConnectionError, match="503"):
        sandbox.run("echo once")
    assert len(backend.transport.requests) == 1


def test_the_waits_end_within_sandbox_ready_timeout():
    backend = FakeBackend(lambda sent: (503, WAKING, MARKED), headers=ROUTED)
    with SandboxClient("tpl", backend=backend, sandbox_ready_timeout=1.5) as sandbox, \
            pytest.raises(SandboxConnectionError, match="waking up"):
        sandbox.run("true")
    assert len(backend.transport.requests) == 2  # sent, waited 1 s, sent; 1 s more: past 1.5
