"""The MCP server in-process (the SDK's in-memory client) against a fake Backend: the tool
table and schemas, results, errors as tool errors, and the session's one sandbox (opened on
first use, retried after a failed open, closed when the session ends)."""

from __future__ import annotations

import base64
import json

import anyio
import mcp
import pytest

from agentic_sandbox import BackendUnavailableError, SandboxClient
from agentic_sandbox._mcp import READ_LIMIT, TOOLS, SessionSandbox, build_server
from tests.unit.client_fakes import FakeBackend

EXEC = {"stdout": "hi\n", "stderr": "warn\n", "exit_code": 3, "timed_out": False,
        "stdout_truncated": True, "stderr_truncated": False}


class Fake:
    def __init__(self, routes, *, fail_first_open=False):
        self.routes = routes
        self.backends: list[FakeBackend] = []
        self.fail_first_open = fail_first_open

    def answer(self, request):
        found = self.routes.get((request.method, request.path_url))
        if found is None:
            return 404, {"error": f"path: {request.path_url!r} does not exist"}
        return found(request) if callable(found) else found

    def client(self) -> SandboxClient:
        failing = self.fail_first_open and not self.backends
        backend = FakeBackend(self.answer, fail_open=BackendUnavailableError(
            "runsc is not installed") if failing else None)
        self.backends.append(backend)
        return SandboxClient("tpl", backend=backend)

    def requests(self):
        return [r for b in self.backends for r in b.transport.requests]


def session_calls(fake, calls):
    """Run (tool, arguments) calls in one in-process MCP session; their results."""
    session = SessionSandbox(fake.client)

    async def go():
        results = []
        async with mcp.Client(build_server(session)) as client:
            for name, arguments in calls:
                results.append(await client.call_tool(name, arguments))
        return results

    return anyio.run(go), session


def test_the_tools_and_their_schemas():
    async def go():
        async with mcp.Client(build_server(SessionSandbox(lambda: None))) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in anyio.run(go)}
    assert list(tools) == [row.name for row in TOOLS] == [
        "run_command", "read_file", "write_file", "list_directory", "path_exists"]
    run = tools["run_command"]
    assert run.input_schema["required"] == ["command"]
    assert set(run.input_schema["properties"]) == {"command", "timeout", "cwd", "env"}
    assert "1 MiB" in run.description and "timed_out" in run.description
    assert set(run.output_schema["properties"]) == {
        "stdout", "stderr", "exit_code", "timed_out", "stdout_truncated", "stderr_truncated"}
    assert "1 MiB" in tools["read_file"].description
    assert tools["read_file"].annotations.read_only_hint is True
    assert tools["write_file"].annotations.read_only_hint is False
    assert all(t.annotations.open_world_hint is False for t in tools.values())
    assert all(t.output_schema for t in tools.values())


def test_run_command_returns_the_result_and_the_sandbox_is_opened_once_lazily():
    fake = Fake({("POST", "/execute"): (200, EXEC)})
    results, _ = session_calls(fake, [
        ("run_command", {"command": "echo hi", "timeout": 5, "cwd": "sub", "env": {"A": "1"}}),
        ("run_command", {"command": "true"}),
    ])
    assert not results[0].is_error
    assert results[0].structured_content == EXEC
    assert json.loads(results[0].content[0].text) == EXEC
    bodies = [json.loads(r.body) for r in fake.requests()]
    assert bodies[0] == {"command": "echo hi", "timeout": 5.0, "env": {"A": "1"}, "cwd": "sub"}
    assert bodies[1] == {"command": "true", "timeout": 60.0}  # the client's default
    assert len(fake.backends) == 1 and fake.backends[0].opened == 1
    assert fake.backends[0].closed == 1  # the session ended: its sandbox is gone


def test_no_tool_call_no_sandbox():
    fake = Fake({})
    session_calls(fake, [])
    assert fake.backends == []


def test_files_round_trip_text_and_binary():
    stored = {}

    def upload(request):
        body = request.body
        name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
        stored[name] = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
        return 200, {"ok": True}

    fake = Fake({("POST", "/upload"): upload,
                 ("GET", "/download/t.txt"): lambda r: (200, stored["t.txt"]),
                 ("GET", "/download/b.bin"): lambda r: (200, stored["b.bin"]),
                 ("GET", "/list/d"): (200, [{"name": "x", "type": "file", "size": 1}]),
                 ("GET", "/exists/t.txt"): (200, {"exists": True})})
    binary = bytes(range(256))
    results, _ = session_calls(fake, [
        ("write_file", {"path": "t.txt", "content": "héllo"}),
        ("write_file", {"path": "b.bin", "content": base64.b64encode(binary).decode(),
                        "encoding": "base64"}),
        ("read_file", {"path": "t.txt"}),
        ("read_file", {"path": "b.bin"}),
        ("list_directory", {"path": "d"}),
        ("path_exists", {"path": "t.txt"}),
    ])
    assert [r.is_error for r in results] == [False] * 6
    assert results[0].structured_content == {"path": "t.txt", "size": 6}
    assert stored == {"t.txt": "héllo".encode(), "b.bin": binary}
    assert results[2].structured_content == {"path": "t.txt", "content": "héllo",
                                             "encoding": "utf-8", "size": 6,
                                             "truncated": False}
    assert results[3].structured_content["encoding"] == "base64"
    assert base64.b64decode(results[3].structured_content["content"]) == binary
    assert results[4].structured_content == {"path": "d", "entries": [
        {"name": "x", "type": "file", "size": 1}], "total": 1, "truncated": False}
    assert results[5].structured_content == {"path": "t.txt", "exists": True}


def test_read_file_is_capped_and_a_cut_character_stays_text():
    big = "é" * (READ_LIMIT // 2 + 10)  # two bytes each: the cap falls inside one
    fake = Fake({("GET", "/download/big"): (200, big.encode())})
    results, _ = session_calls(fake, [("read_file", {"path": "big"})])
    content = results[0].structured_content
    assert content["truncated"] and content["encoding"] == "utf-8"
    assert content["size"] == len(big.encode())
    assert content["content"] == "é" * (READ_LIMIT // 2)


def test_errors_are_tool_errors_with_the_runtimes_message_and_no_traceback():
    fake = Fake({("GET", "/download/%2E%2E/etc/passwd"): (
        403, {"error": "path: '../etc/passwd' is outside the workspace"})})
    results, _ = session_calls(fake, [
        ("read_file", {"path": "../etc/passwd"}),
        ("read_file", {"path": "missing"}),
        ("write_file", {"path": "x", "content": "not base64!", "encoding": "base64"}),
        ("read_file", {"path": "nul\x00"}),
        ("run_command", {"command": "x", "timeout": 601}),
    ])
    assert all(r.is_error for r in results)
    texts = [r.content[0].text for r in results]
    assert texts[0].endswith("path: '../etc/passwd' is outside the workspace (403)")
    assert texts[1].endswith("does not exist (404)")
    assert "not valid base64" in texts[2]
    assert "NUL" in texts[3]
    assert "less than or equal to 600" in texts[4]
    assert not any("Traceback" in t for t in texts)


def test_a_failed_open_is_a_tool_error_and_the_next_call_tries_again():
    fake = Fake({("POST", "/execute"): (200, EXEC)}, fail_first_open=True)
    results, _ = session_calls(fake, [("run_command", {"command": "true"}),
                                      ("run_command", {"command": "true"})])
    assert results[0].is_error and "runsc is not installed" in results[0].content[0].text
    assert not results[1].is_error
    assert [b.opened for b in fake.backends] == [1, 1]
    assert [b.closed for b in fake.backends] == [1, 1]


def test_close_while_the_session_is_ending_refuses_new_calls():
    fake = Fake({("POST", "/execute"): (200, EXEC)})
    session = SessionSandbox(fake.client)
    session.get()
    session.close()
    session.close()  # twice is fine
    assert fake.backends[0].closed == 1
    with pytest.raises(Exception, match="session is ending"):
        session.get()
