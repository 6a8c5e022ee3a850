"""SandboxClient against a fake Backend: lifecycle, request shapes, results, errors, replays."""

from __future__ import annotations

import json
import math

import httpx2
import pytest

from agentic_sandbox import (
    ExecutionResult,
    FileEntry,
    OutputChunk,
    SandboxClient,
    SandboxConnectionError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from agentic_sandbox._protocol import CONNECT_TIMEOUT_S, RUN_GRACE_S, Call, replay_allowed
from tests.unit.client_fakes import FakeBackend


def answers(table):
    """A handler from {(method, path): (status, body)}; unknown routes 404."""
    def handler(request):
        path = request.path_url
        return table.get((request.method, path), (404, {"error": f"no route {path}"}))
    return handler


def client_with(handler, **kwargs):
    backend = FakeBackend(handler, headers=kwargs.pop("headers", None))
    return SandboxClient("tpl", backend=backend, **kwargs), backend


EXEC_OK = {"stdout": "hi\n", "stderr": "", "exit_code": 0, "timed_out": False,
           "stdout_truncated": False, "stderr_truncated": False}


def test_run_returns_execution_result_and_sends_command_and_timeout():
    client, backend = client_with(answers({("POST", "/execute"): (200, EXEC_OK)}),
                                  headers={"X-Sandbox-ID": "s1"}, run_timeout=12)
    with client as sandbox:
        result = sandbox.run("echo hi")
    assert result == ExecutionResult("hi\n", "", 0)
    assert result.ok
    sent = backend.transport.requests[0]
    assert json.loads(sent.body) == {"command": "echo hi", "timeout": 12}
    assert sent.headers["X-Sandbox-ID"] == "s1"
    # HTTP read deadline = the command's deadline plus the grace for killing its tree.
    assert backend.transport.timeouts[0]["read"] == 12 + RUN_GRACE_S
    assert backend.transport.timeouts[0]["connect"] == CONNECT_TIMEOUT_S
    assert backend.opened == 1 and backend.closed == 1


def test_run_per_call_timeout_env_cwd_and_none():
    client, backend = client_with(answers({("POST", "/execute"): (200, EXEC_OK)}))
    with client as sandbox:
        sandbox.run("x", timeout=3, env={"A": "1"}, cwd="sub")
        sandbox.run("y", timeout=None)
    first, second = (json.loads(r.body) for r in backend.transport.requests)
    assert first == {"command": "x", "timeout": 3, "env": {"A": "1"}, "cwd": "sub"}
    assert second == {"command": "y"}
    assert backend.transport.timeouts[1]["read"] is None


def test_nonzero_exit_and_timeout_are_data_not_exceptions():
    body = EXEC_OK | {"exit_code": -9, "timed_out": True, "stdout": "partial"}
    client, _ = client_with(answers({("POST", "/execute"): (200, body)}))
    with client as sandbox:
        result = sandbox.run("sleep 100", timeout=1)
    # A runtime older than the `signal` field reports -9: read as 128 + 9 and SIGKILL.
    assert result.timed_out and result.exit_code == 137 and not result.ok
    assert result.signal == "SIGKILL"
    assert result.stdout == "partial"


def test_files_round_trip_shapes():
    table = {("POST", "/upload"): (200, {"path": "/w/a/b.txt", "size": 3}),
             ("GET", "/download/a/b.txt"): (200, b"\x00\x01\x02"),
             ("GET", "/list/a"): (200, [{"name": "b.txt", "type": "file", "size": 3}]),
             ("GET", "/exists/a/b.txt"): (200, {"path": "/w/a/b.txt", "exists": True}),
             ("GET", "/exists/nope"): (200, {"path": "/w/nope", "exists": False})}
    client, backend = client_with(answers(table))
    with client as sandbox:
        sandbox.write("a/b.txt", "héllo")
        assert sandbox.read("a/b.txt") == b"\x00\x01\x02"
        assert sandbox.list("a") == [FileEntry("b.txt", "file", 3)]
        assert sandbox.exists("a/b.txt") is True
        assert sandbox.exists("nope") is False
    upload = backend.transport.requests[0]
    assert b'name="file"; filename="a/b.txt"' in upload.body
    assert "héllo".encode() in upload.body


def test_dot_segments_reach_the_runtime_unnormalised():
    client, backend = client_with(lambda r: (403, {"error": "outside the workspace"}))
    with client as sandbox, pytest.raises(SandboxRequestError) as info:
        sandbox.read("../../etc/passwd")
    assert info.value.status_code == 403
    assert "outside the workspace" in str(info.value)
    assert backend.transport.requests[0].path_url == "/download/%2E%2E/%2E%2E/etc/passwd"


def test_special_characters_in_paths_are_quoted():
    client, backend = client_with(lambda r: (200, {"exists": True}))
    with client as sandbox:
        sandbox.exists("dir with space/q?#.txt")
    assert backend.transport.requests[0].path_url == "/exists/dir%20with%20space/q%3F%23.txt"


def test_error_statuses_map_to_the_error_tree():
    codes = {400: SandboxRequestError, 404: SandboxRequestError, 413: SandboxRequestError,
             429: SandboxRequestError, 504: SandboxTimeoutError}
    for code, error in codes.items():
        client, _ = client_with(lambda r, code=code: (code, {"error": f"e{code}"}))
        with client as sandbox, pytest.raises(error) as info:
            sandbox.run("x")
        assert f"e{code}" in str(info.value)
        if error is SandboxRequestError:
            assert info.value.status_code == code


def test_router_502_is_a_connection_error():
    client, _ = client_with(lambda r: (502, {"error": "no address"}),
                            headers={"X-Sandbox-ID": "s"})
    with client as sandbox, pytest.raises(SandboxConnectionError):
        sandbox.exists("x")


def test_sandbox_timeout_error_is_a_timeout_error():
    assert issubclass(SandboxTimeoutError, TimeoutError)
    assert issubclass(SandboxTimeoutError, SandboxError)


def raising(exc_factory, then=(200, EXEC_OK)):
    calls = []

    def handler(request):
        calls.append(request.method)
        if len(calls) == 1:
            raise exc_factory()
        return then
    return handler, calls


def protocol_error():
    return httpx2.RemoteProtocolError("Server disconnected without sending a response.")


def never_connected():
    return httpx2.ConnectError("[Errno 111] Connection refused")


def test_post_is_never_replayed_after_it_may_have_been_received():
    handler, calls = raising(protocol_error)
    client, _ = client_with(handler)
    with client as sandbox, pytest.raises(SandboxConnectionError):
        sandbox.run("rm -rf x && echo once")
    assert calls == ["POST"]


def test_post_read_timeout_is_not_replayed():
    handler, calls = raising(lambda: httpx2.ReadTimeout("slow"))
    client, _ = client_with(handler)
    with client as sandbox, pytest.raises(SandboxTimeoutError):
        sandbox.write("f", b"x")
    assert calls == ["POST"]


def test_post_that_never_connected_is_sent_again():
    handler, calls = raising(never_connected)
    client, _ = client_with(handler)
    with client as sandbox:
        assert sandbox.run("echo once").stdout == "hi\n"
    assert calls == ["POST", "POST"]


def test_get_is_retried_once_after_a_connection_failure():
    handler, calls = raising(protocol_error, then=(200, {"exists": True}))
    client, _ = client_with(handler)
    with client as sandbox:
        assert sandbox.exists("f")
    assert calls == ["GET", "GET"]


def test_get_gives_up_after_the_second_failure():
    client, backend = client_with(lambda r: (_ for _ in ()).throw(protocol_error()))
    with client as sandbox, pytest.raises(SandboxConnectionError):
        sandbox.read("f")
    assert len(backend.transport.requests) == 2


def test_stream_yields_chunks_then_exit_code():
    lines = [{"stream": "stdout", "data": "a\n"}, {"stream": "stderr", "data": "oops\n"},
             {"stream": "stdout", "data": "b\n"},
             {"exit_code": 3, "timed_out": False, "stdout_truncated": False,
              "stderr_truncated": False}]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    client, backend = client_with(lambda r: (200, body))
    with client as sandbox, sandbox.stream("cmd", timeout=5) as stream:
        chunks = list(stream)
    assert chunks == [OutputChunk("stdout", "a\n"), OutputChunk("stderr", "oops\n"),
                      OutputChunk("stdout", "b\n")]
    assert stream.exit_code == 3 and not stream.timed_out
    assert stream.result == ExecutionResult("a\nb\n", "oops\n", 3)
    assert backend.transport.requests[0].path_url == "/execute/stream"


def test_stream_cut_before_exit_status_is_an_error():
    body = json.dumps({"stream": "stdout", "data": "a"}).encode() + b"\n"
    client, _ = client_with(lambda r: (200, body))
    with client as sandbox:
        stream = sandbox.stream("cmd")
        with pytest.raises(SandboxConnectionError):
            list(stream)
        assert stream.exit_code is None


def test_calls_outside_the_block_and_reopening_are_refused():
    client, backend = client_with(answers({}))
    with pytest.raises(RuntimeError, match="not open"):
        client.run("x")
    with client:
        pass
    with pytest.raises(RuntimeError, match="closed"), client:
        pass
    client.close()  # twice is fine
    assert backend.closed == 1


def test_failed_open_still_releases_the_backend():
    backend = FakeBackend(answers({}), fail_open=SandboxTimeoutError("not ready"))
    with pytest.raises(SandboxTimeoutError), SandboxClient("tpl", backend=backend):
        pass
    assert backend.closed == 1


def test_exit_releases_on_exceptions_in_the_block():
    client, backend = client_with(answers({}))
    with pytest.raises(KeyError), client:
        raise KeyError("agent bug")
    assert backend.closed == 1


def test_caller_mistakes_are_value_and_type_errors():
    with pytest.raises(ValueError):
        SandboxClient("")
    with pytest.raises(ValueError):
        SandboxClient("tpl", backend=FakeBackend(answers({})), run_timeout=0)
    with pytest.raises(TypeError):
        SandboxClient("tpl", backend=object())  # type: ignore[arg-type]
    client, _ = client_with(answers({}))
    with client as sandbox:
        with pytest.raises(TypeError):
            sandbox.write("f", 3)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            sandbox.run("x", timeout=-1)
        with pytest.raises(ValueError):
            sandbox.read("a\x00b")


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -1])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused_before_anything(value):
    """inf passed `not value > 0`: the CLI's `run --timeout 1e309` opened a sandbox, then
    failed with "Out of range float values are not JSON compliant" (finding 44)."""
    for label in ("run_timeout", "request_timeout", "sandbox_ready_timeout"):
        with pytest.raises(ValueError, match=f"{label} must be"):
            SandboxClient("tpl", backend=FakeBackend(answers({})), **{label: value})
    client, backend = client_with(answers({("POST", "/execute"): (200, EXEC_OK)}))
    with client as sandbox, pytest.raises(ValueError, match="timeout must be"):
        sandbox.run("true", timeout=value)
    assert backend.transport.requests == []


@pytest.mark.parametrize(("method", "error", "attempt", "again"), [
    ("GET", httpx2.RemoteProtocolError("reset"), 0, True),
    ("GET", httpx2.ReadError("broken"), 0, True),
    ("GET", httpx2.ConnectError("refused"), 1, False),  # at most twice in all
    ("GET", httpx2.ReadTimeout("slow"), 0, False),  # it would only wait as long again
    ("POST", httpx2.ConnectError("refused"), 0, True),  # never left this process
    ("POST", httpx2.ConnectTimeout("slow connect"), 0, True),
    ("POST", httpx2.RemoteProtocolError("reset"), 0, False),  # may have run
    ("POST", httpx2.WriteError("broken pipe"), 0, False),
    ("POST", httpx2.ReadTimeout("slow"), 0, False),
])
def test_the_replay_rule(method, error, attempt, again):
    call = Call(method, "/x", 1.0, lambda answer: answer)
    assert replay_allowed(call, error, attempt) is again
