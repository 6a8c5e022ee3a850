"""`agentic-sandbox mcp` under the MCP SDK's own stdio client, on the local gVisor backend.

The test is the MCP client: it spawns the console script as the SDK does for Claude Desktop
and friends, lists the tools, runs commands and moves files, and checks the session's one
sandbox: none before the first tool call, exactly one during the session, none once the
session ends (stdin closed) or the server gets SIGTERM. Each test has its own state folder,
so "none" means none of that server's.
"""

from __future__ import annotations

import os
import signal
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
        {"name": "a.txt", "type": "file", "size": 9}]}
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
