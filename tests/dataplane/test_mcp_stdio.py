"""`agentic-sandbox mcp` under the MCP SDK's own stdio client, on the local gVisor backend.

The test is the MCP client: it spawns the console script as the SDK does for Claude Desktop
and friends, lists the tools, runs commands and moves files, and checks the session's one
sandbox: none before the first tool call, exactly one during the session, none once the
session ends (stdin closed) or the server gets SIGTERM. Each test has its own state folder,
so "none" means none of that server's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from testbed.support import script
from tests.dataplane.conftest import containers


@pytest.fixture
def state(tmp_path: Path, runsc_ok: None) -> Path:
    return tmp_path


def params(state: Path) -> StdioServerParameters:
    return StdioServerParameters(command=script("agentic-sandbox"),
                                 args=["mcp", "--backend", "local"],
                                 env={"AGENTIC_SANDBOX_STATE_DIR": str(state)})


def sandboxes(state: Path) -> list[str]:
    return containers(state) if (state / "runsc").is_dir() else []


def left_behind(state: Path) -> list[str]:
    workspaces = state / "workspaces"
    return sandboxes(state) + (sorted(p.name for p in workspaces.iterdir())
                               if workspaces.is_dir() else [])


def test_a_session_works_in_one_sandbox_and_leaves_nothing(state):
    seen: dict[str, object] = {}

    async def session() -> None:
        async with stdio_client(params(state)) as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            seen["tools"] = [t.name for t in (await client.list_tools()).tools]
            seen["before"] = sandboxes(state)
            echo = await client.call_tool("run_command", {"command": "echo hello from mcp"})
            seen["echo"] = echo.structured_content
            seen["during"] = sandboxes(state)
            failing = await client.call_tool("run_command", {"command": "echo no >&2; exit 3"})
            seen["failing"] = (failing.is_error, failing.structured_content)
            slow = await client.call_tool("run_command", {"command": "sleep 60", "timeout": 1})
            seen["slow"] = slow.structured_content
            written = await client.call_tool("write_file", {"path": "notes/a.txt",
                                                            "content": "línea 1\n"})
            seen["written"] = (written.is_error, written.structured_content)
            read = await client.call_tool("read_file", {"path": "notes/a.txt"})
            seen["read"] = read.structured_content
            listing = await client.call_tool("list_directory", {"path": "notes"})
            seen["listing"] = listing.structured_content
            exists = await client.call_tool("path_exists", {"path": "notes/a.txt"})
            seen["exists"] = exists.structured_content
            shell = await client.call_tool("run_command", {"command": "cat notes/a.txt"})
            seen["shell"] = shell.structured_content
            outside = [await client.call_tool("read_file", {"path": path})
                       for path in ("../../etc/passwd", "/etc/passwd")]
            seen["outside"] = [(r.is_error, r.content[0].text) for r in outside]
            escape = await client.call_tool("write_file", {"path": "../x", "content": "no"})
            seen["escape"] = (escape.is_error, escape.content[0].text)
            seen["after_errors"] = sandboxes(state)

    anyio.run(session)
    assert seen["tools"] == ["run_command", "read_file", "write_file", "list_directory",
                             "path_exists"]
    assert seen["before"] == []  # opened on first use, not at start
    assert seen["echo"] == {"stdout": "hello from mcp\n", "stderr": "", "exit_code": 0,
                            "timed_out": False, "stdout_truncated": False,
                            "stderr_truncated": False}
    assert len(seen["during"]) == 1  # type: ignore[arg-type]
    is_error, failing = seen["failing"]  # type: ignore[misc]
    assert not is_error and failing["exit_code"] == 3 and failing["stderr"] == "no\n"
    assert seen["slow"]["timed_out"] is True  # type: ignore[index]
    assert seen["written"] == (False, {"path": "notes/a.txt", "size": 9})
    assert seen["read"] == {"path": "notes/a.txt", "content": "línea 1\n", "encoding": "utf-8",
                            "size": 9, "truncated": False}
    assert seen["listing"] == {"path": "notes", "entries": [
        {"name": "a.txt", "type": "file", "size": 9}], "total": 1, "truncated": False}
    assert seen["exists"] == {"path": "notes/a.txt", "exists": True}
    assert seen["shell"]["stdout"] == "línea 1\n"  # type: ignore[index]
    for is_error, text in seen["outside"]:  # type: ignore[attr-defined]
        assert is_error and "outside the workspace (403)" in text
        assert "Traceback" not in text
    assert seen["escape"][0] and "outside the workspace" in seen["escape"][1]  # type: ignore[index]
    assert seen["after_errors"] == seen["during"]  # errors cost no sandbox
    assert left_behind(state) == []


def server_pids() -> list[int]:
    """Our children running `agentic-sandbox mcp` (the stdio client spawned them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"mcp" in argv and \
                any(a.endswith(b"agentic-sandbox") for a in argv):
            found.append(int(entry.name))
    return found


def test_sigterm_closes_the_sandbox_even_mid_command(state):
    seen: dict[str, object] = {}

    async def session() -> None:
        async with stdio_client(params(state)) as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            await client.call_tool("run_command", {"command": "true"})
            seen["during"] = sandboxes(state)
            pids = server_pids()
            seen["pids"] = pids

            async def long_call() -> None:
                try:
                    seen["long"] = await client.call_tool(
                        "run_command", {"command": "sleep 120", "timeout": 300})
                except Exception as exc:  # the server is gone: the call cannot finish
                    seen["long"] = exc

            async with anyio.create_task_group() as group:
                group.start_soon(long_call)
                await anyio.sleep(1)
                os.kill(pids[0], signal.SIGTERM)
                deadline = time.monotonic() + 60
                while server_pids() and time.monotonic() < deadline:
                    await anyio.sleep(0.1)
                seen["gone"] = not server_pids()
                seen["after"] = left_behind(state)
                group.cancel_scope.cancel()

    anyio.run(session)
    assert len(seen["during"]) == 1 and len(seen["pids"]) == 1  # type: ignore[arg-type]
    assert seen["gone"] is True
    assert seen["after"] == []


# -- a client nobody here wrote: raw JSON-RPC lines ----------------------------------------------

INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "0"}}}


class RawClient:
    """`agentic-sandbox mcp` spoken to line by line, as a hostile or broken client would."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen(
            [script("agentic-sandbox"), "mcp", "--backend", "local"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "AGENTIC_SANDBOX_STATE_DIR": str(state)})
        self.lines: list[bytes] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(INITIALIZE).encode())
        assert self.answer(0) is not None
        self.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.arrived:
                self.lines.append(line)
                self.arrived.notify_all()

    def send(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()

    def answer(self, ident: object, timeout: float = 20) -> dict[str, object] | None:
        """The answer to `ident` once it arrives (None if none came within `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for line in self.lines:
                    message = json.loads(line)  # every line on stdout is one JSON message
                    if message.get("id") == ident:
                        return message  # type: ignore[no-any-return]
                left = deadline - time.monotonic()
                if left <= 0 or not self.arrived.wait(left):
                    return None

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(60)


def request(ident: object, method: str, params: object = None) -> bytes:
    message: dict[str, object] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


# Requests with an id the SDK cannot read: before finding 41 it answered none of them, and
# the client waited for ever.
UNREADABLE = {
    "params that are a list": request(11, "tools/call", [1, 2]),
    "a path holding a lone surrogate": b'{"jsonrpc": "2.0", "id": 12, "method": "tools/call", '
                                       b'"params": {"name": "read_file", "arguments": '
                                       b'{"path": "\\ud800"}}}',
    "a method that is a number": b'{"jsonrpc": "2.0", "id": "thirteen", "method": 13}',
    "no jsonrpc version": b'{"id": 14, "method": "ping", "jsonrpc": "1.0"}',
    "a batch of two requests": b"[" + request(15, "ping") + b", " + request(16, "ping") + b"]",
}
# Lines with no id to answer to: nothing is answered, nothing breaks.
NO_ID = {
    "not JSON": b"{not json",
    "an empty object": b"{}",
    "JSON nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "a bare string": b'"hello"',
}


def test_every_request_the_sdk_cannot_read_is_answered_with_an_error(hostile, state):
    client = RawClient(state)
    try:
        for case, line in NO_ID.items():
            with hostile("mcp", f"a line with no id: {case}"):
                client.send(line)
                client.send(request(f"after {case}", "ping"))
                assert client.answer(f"after {case}") == {
                    "jsonrpc": "2.0", "id": f"after {case}", "result": {}}
        idents = {"params that are a list": [11], "a path holding a lone surrogate": [12],
                  "a method that is a number": ["thirteen"], "no jsonrpc version": [14],
                  "a batch of two requests": [15, 16]}
        for case, line in UNREADABLE.items():
            with hostile("mcp", f"a request the SDK cannot read: {case}"):
                client.send(line)
                for ident in idents[case]:
                    answer = client.answer(ident)
                    assert answer is not None, f"{case}: no answer to id {ident!r}"
                    assert answer["error"]["code"] == -32601  # type: ignore[index]
                    assert "invalid request" in answer["error"]["data"]  # type: ignore[index]
        with hostile("mcp", "the session still works after them"):
            client.send(request(20, "tools/list"))
            answer = client.answer(20)
            assert answer is not None and len(answer["result"]["tools"]) == 5  # type: ignore[index]
            assert sandboxes(state) == []  # none of them reached a tool
    finally:
        assert client.close() == 0
    assert left_behind(state) == []


def test_a_line_longer_than_the_limit_is_dropped_in_bounded_memory(hostile, state):
    with hostile("mcp", "a 256 MiB line (the limit is 32 MiB)"):
        client = RawClient(state)
        try:
            before = client.rss_mib()
            assert client.proc.stdin is not None
            chunk = b'{"jsonrpc": "2.0", "id": 30, "method": "ping", "params": {"x": "' + \
                b"x" * (1 << 20)
            for _ in range(256):
                client.proc.stdin.write(chunk)
            client.send(b'"}}')
            client.send(request(31, "ping"))
            assert client.answer(31) is not None
            refused = client.answer(30)  # its id, read from the line's start
            assert refused is not None and "longer than" in refused["error"]["data"]  # type: ignore[index]
            grown = client.rss_mib() - before
            assert grown < 64, f"the server grew by {grown:.0f} MiB"  # before: by 145 MiB
        finally:
            assert client.close() == 0


def test_a_huge_folder_is_listed_in_part_not_flooding_the_model(hostile, state):
    """A folder of 32,757 files with 246-character names was one 20 MB answer (finding 43)."""
    with hostile("mcp", "list_directory of 1,500 files with 200-character names"):
        client = RawClient(state)
        try:
            make = ("mkdir d && cd d && python3 -c \"import os\nfor i in range(1500): "
                    "open('%04d' % i + 'x' * 196, 'w').close()\"")
            client.send(request(40, "tools/call", {"name": "run_command", "arguments": {
                "command": make, "timeout": 120}}))
            made = client.answer(40, 180)
            assert made is not None and made["result"]["structuredContent"]["exit_code"] == 0  # type: ignore[index]
            client.send(request(41, "tools/call", {"name": "list_directory",
                                                   "arguments": {"path": "d"}}))
            answer = client.answer(41)
            assert answer is not None
            listing = answer["result"]["structuredContent"]  # type: ignore[index]
            assert (listing["total"], listing["truncated"], len(listing["entries"])) == \
                (1500, True, 1000)
            assert listing["entries"][-1]["name"] == "0999" + "x" * 196
        finally:
            assert client.close() == 0
        assert left_behind(state) == []


def test_stdin_closed_mid_call_ends_the_command_and_the_sandbox_at_once(hostile, state):
    """MCP's stdio shutdown is the client closing our stdin. The SDK answers nothing after
    it, yet the server waited for the running command (18.1 s of a 20 s `sleep`) before it
    closed the sandbox and exited (finding 45)."""
    with hostile("mcp", "stdin closed while a 60 s command runs"):
        client = RawClient(state)
        client.send(request(50, "tools/call", {"name": "run_command", "arguments": {
            "command": "sleep 60", "timeout": 300}}))
        deadline = time.monotonic() + 60
        while not sandboxes(state) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the command is under way
        assert len(sandboxes(state)) == 1
        started = time.monotonic()
        assert client.close() == 0
        assert time.monotonic() - started < 20  # before: the command's remaining ~58 s
        assert left_behind(state) == []
