"""`agentic-sandbox mcp`: a Model Context Protocol server on stdio, one sandbox per session.

Started by the command line (agentic_sandbox._cli, subcommand `mcp`) under an MCP client
(Claude Desktop, an agent framework), which speaks JSON-RPC on our stdin and stdout. Built on
the official SDK (`mcp`, the extra `agent-sandbox[mcp]`; only this module imports it) and on
SandboxClient's public API. The tools are one table (TOOLS) of SandboxTools methods; a later
client feature is a new method and a new row.

Lifetime: a stdio server serves exactly one session, and that session gets one sandbox,
opened on the first tool call (not at start: MCP clients start every registered server when
they start, often for hours, and the initialize handshake must not wait for a sandbox that
may take a minute on a cluster), and closed when the session ends: stdin closes (the stdin
guard closes it at once, even mid-call; then the lifespan exits), or SIGTERM, SIGINT or
SIGHUP arrives (the handler closes it, then dies of the signal). Only SIGKILL can leave one
behind: the local backend removes it the next time it starts; a Kubernetes claim stays
until deleted.

Stdin passes through a guard (guard_stdin) before the SDK reads it: a line the SDK cannot
read would get no answer from it, and a client waiting on that request would wait forever, so
the guard turns every such request that carries an id into one the SDK answers with an
error; and no line longer than MAX_MESSAGE reaches the SDK, which reads whole lines into
memory.

This module must never write to stdout (it is the protocol's channel), and no traceback may
reach the model: sandbox errors become tool errors with one line of text.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import IO, Annotated, Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations, jsonrpc_message_adapter
from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads these natively on 3.11

from agentic_sandbox import __version__, _ops
from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxError

__all__ = ["MAX_MESSAGE", "TOOLS", "SandboxTools", "SessionSandbox", "build_server",
           "guard_stdin", "serve"]

T = TypeVar("T")
log = logging.getLogger(__name__)

SERVER_NAME: Final = "agentic-sandbox"
# The runtime caps each output stream at 1 MiB; a file read is capped the same, so no
# single answer floods the model's context.
READ_LIMIT: Final = 1024 * 1024
# list_directory returns at most this many entries (a folder of 32,757 files with long names
# was a 20 MB answer); the rest are counted.
LIST_LIMIT: Final = 1000
INSTRUCTIONS: Final = """\
These tools work in one isolated gVisor sandbox, made for this session on the first tool \
call and deleted, with everything in it, when the session ends. Paths are relative to the \
sandbox's workspace (or absolute inside it); the file tools refuse anything outside it. \
Commands run with /bin/sh -c in the workspace and are killed, with every process they \
started, at their timeout (default 60 s, at most 600 s). Each output stream is capped at \
1 MiB, read_file returns at most 1 MiB and list_directory at most 1000 entries; the results \
say when something was cut. The \
sandbox may have no network access (the local backend has none)."""

# One JSON-RPC message (one line): room for write_file's content of a 24 MiB file in base64.
MAX_MESSAGE: Final = 32 * 1024 * 1024
Path_ = Annotated[str, Field(description="a path relative to the workspace, or absolute "
                                         "inside it")]


class CommandResult(TypedDict):
    """What run_command returns."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool


class FileContent(TypedDict):
    """What read_file returns."""

    path: str
    content: str
    encoding: Literal["utf-8", "base64"]
    size: int
    truncated: bool


class Written(TypedDict):
    path: str
    size: int


class Entry(TypedDict):
    name: str
    type: str
    size: int


class Listing(TypedDict):
    path: str
    entries: list[Entry]
    total: int
    truncated: bool


class Existence(TypedDict):
    path: str
    exists: bool


class SessionSandbox:
    """The session's one sandbox: opened on first use, closed once when the session ends.

    A failed open leaves nothing open and the next tool call tries again. close() may come
    from a signal handler while a tool call is still opening the sandbox: it releases what
    that open acquired (the backend's close is safe mid-open), then waits for it to end.
    A second close() (stdin's end, the lifespan, a signal) returns only once the first has
    finished: the process must not exit while another thread is still removing the sandbox.
    """

    def __init__(self, factory: Callable[[], SandboxClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._client: SandboxClient | None = None
        self._opening: SandboxClient | None = None
        self._closing = threading.RLock()  # reentrant: a signal may arrive mid-close
        self.closing = False

    def get(self) -> SandboxClient:
        with self._lock:
            if self.closing:
                raise SandboxError("the session is ending; its sandbox is closed")
            if self._client is None:
                client = self._opening = self._factory()
                try:
                    client.open()
                finally:
                    self._opening = None
                self._client = client
            return self._client

    def close(self) -> None:
        self.closing = True
        opening = self._opening
        if opening is not None:
            opening.backend.close()
        with self._closing:
            with self._lock:
                client, self._client = self._client, None
            if client is not None:
                client.close()


class SandboxTools:
    """The tools, as methods: their signatures and docstrings are what the model sees."""

    def __init__(self, session: SessionSandbox) -> None:
        self.session = session

    def _call(self, action: Callable[[SandboxClient], T]) -> T:
        try:
            return action(self.session.get())
        except SandboxError as exc:
            raise ToolError(_ops.describe(exc)) from exc
        except (ValueError, TypeError) as exc:  # arguments the client refuses before sending
            raise ToolError(str(exc)) from exc

    def run_command(
            self,
            command: Annotated[str, Field(description="a shell command line, run as "
                                                      "/bin/sh -c COMMAND")],
            timeout: Annotated[float | None, Field(
                gt=0, le=600, description="seconds before the command and every process "
                                          "it started are killed (default 60)")] = None,
            cwd: Annotated[str | None, Field(description="working directory inside the "
                                                         "workspace (default: the "
                                                         "workspace)")] = None,
            env: Annotated[dict[str, str] | None, Field(
                description="extra environment variables")] = None) -> CommandResult:
        """Run a shell command in the sandbox and wait for it to finish.

        Returns its stdout, stderr and exit_code; a non-zero exit_code is the command's
        own result, not a failure of the tool. timed_out is true when the timeout killed
        it. Each output stream is capped at 1 MiB by the sandbox runtime; stdout_truncated
        and stderr_truncated say when output was cut. Files written stay for later calls.
        """
        options: dict[str, Any] = {"cwd": cwd, "env": env}
        if timeout is not None:
            options["timeout"] = timeout
        result = self._call(lambda sandbox: sandbox.run(command, **options))
        return CommandResult(stdout=result.stdout, stderr=result.stderr,
                             exit_code=result.exit_code, timed_out=result.timed_out,
                             stdout_truncated=result.stdout_truncated,
                             stderr_truncated=result.stderr_truncated)

    def read_file(self, path: Path_) -> FileContent:
        """Read a file from the sandbox's workspace.

        Text that is valid UTF-8 comes back as is (encoding "utf-8"), anything else as
        base64 (encoding "base64"). At most the first 1 MiB is returned (truncated says
        so; size is the whole file's); read larger files in parts with run_command
        (head, tail, sed -n).
        """
        data = self._call(lambda sandbox: sandbox.read(path))
        part = data[:READ_LIMIT]
        try:
            text, encoding = part.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            if len(data) > READ_LIMIT and exc.start >= len(part) - 3:
                text, encoding = part[:exc.start].decode("utf-8"), "utf-8"  # cut mid-character
            else:
                text, encoding = base64.b64encode(part).decode("ascii"), "base64"
        return FileContent(path=path, content=text, encoding=encoding,  # type: ignore[typeddict-item]
                           size=len(data), truncated=len(data) > READ_LIMIT)

    def write_file(
            self, path: Path_,
            content: Annotated[str, Field(description="the file's new content")],
            encoding: Annotated[Literal["utf-8", "base64"], Field(
                description="how content is given: utf-8 text, or base64 for binary "
                            "data")] = "utf-8") -> Written:
        """Write a file in the sandbox's workspace, replacing it if it exists.

        Missing parent directories are created. The file appears whole or not at all.
        """
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ToolError(f"content is not valid base64: {exc}") from exc
        else:
            data = content.encode("utf-8")
        self._call(lambda sandbox: sandbox.write(path, data))
        return Written(path=path, size=len(data))

    def list_directory(
            self, path: Annotated[str, Field(description="a directory relative to the "
                                                         "workspace, or absolute inside "
                                                         "it")] = ".") -> Listing:
        """List a directory of the sandbox's workspace: name, type (file, directory,
        symlink, other) and size of each entry, sorted by name. Symlinks are not followed.
        At most the first 1000 entries are returned (truncated says so; total counts them
        all); list larger folders in parts with run_command (ls | sed -n 1001,2000p)."""
        entries = self._call(lambda sandbox: sandbox.list(path))
        return Listing(path=path, entries=[Entry(name=e.name, type=e.type, size=e.size)
                                           for e in entries[:LIST_LIMIT]],
                       total=len(entries), truncated=len(entries) > LIST_LIMIT)

    def path_exists(self, path: Path_) -> Existence:
        """Whether a path exists in the sandbox's workspace."""
        return Existence(path=path, exists=self._call(lambda sandbox: sandbox.exists(path)))


@dataclass(frozen=True)
class ToolRow:
    """One tool: the SandboxTools method and how it touches the sandbox."""

    name: str
    title: str
    read_only: bool
    idempotent: bool


TOOLS: Final = (
    ToolRow("run_command", "Run a shell command", read_only=False, idempotent=False),
    ToolRow("read_file", "Read a file", read_only=True, idempotent=True),
    ToolRow("write_file", "Write a file", read_only=False, idempotent=True),
    ToolRow("list_directory", "List a directory", read_only=True, idempotent=True),
    ToolRow("path_exists", "Check that a path exists", read_only=True, idempotent=True),
)


def build_server(session: SessionSandbox) -> MCPServer[None]:
    """The MCP server: the tools of TOOLS, and the session's sandbox closed when it ends."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer[None]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close)

    server: MCPServer[None] = MCPServer(SERVER_NAME, version=__version__,
                                        instructions=INSTRUCTIONS, lifespan=lifespan,
                                        log_level="WARNING")
    tools = SandboxTools(session)
    for row in TOOLS:
        # Nothing in a sandbox reaches the world outside it through these tools.
        server.add_tool(getattr(tools, row.name), name=row.name, title=row.title,
                        annotations=ToolAnnotations(read_only_hint=row.read_only,
                                                    destructive_hint=not row.read_only,
                                                    idempotent_hint=row.idempotent,
                                                    open_world_hint=False))
    return server


# The id of a request whose first members are "jsonrpc", "id" and "method" (as clients write
# them), read from the start of a line too long to parse: the top-level object's own id, and
# never a response's (those have no "method").
LEADING_ID: Final = re.compile(
    rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"[^"]*"\s*,\s*)?"id"\s*:\s*(-?[0-9]+|"(?:[^"\\]|\\.)*")'
    rb'\s*,\s*"method"')


def _answerable(message: object, why: str = "") -> list[bytes]:
    """For a message the SDK cannot read: a request it will answer with an error, with the
    message's id, for each request in it that has a usable id (an integer or a string, as MCP
    allows). The SDK answers an unknown method with -32601 and the method as the error's
    data, which here says why the message was refused."""
    found = []
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict) or "method" not in item:
            continue
        ident = item.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int | str):
            continue
        why = why or ("batches are not supported" if isinstance(message, list) else
                      "not a valid MCP JSON-RPC 2.0 request (its fields or their types)")
        line = json.dumps({"jsonrpc": "2.0", "id": ident,
                           "method": f"invalid request: {why}"}) + "\n"
        try:
            found.append(line.encode("utf-8"))
        except UnicodeEncodeError:  # an id holding a lone surrogate: nothing can echo it
            continue
    return found


def screened(line: bytes) -> list[bytes]:
    """What the SDK gets for one line from the client: the line itself when it can read it,
    else the requests that make it answer an error to each id in it (none when there is no
    id to answer to: not JSON, a notification, a response)."""
    try:
        jsonrpc_message_adapter.validate_json(line, by_name=False)
        return [line]
    except ValueError:
        pass
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        message = None
    answers = _answerable(message)
    if line.strip():
        log.warning("refused a message the MCP SDK cannot read (%d bytes%s)", len(line),
                    "; answered an error" if answers else "; no id to answer to")
    return answers


def _pump(source: IO[bytes], sink: IO[bytes], limit: int, on_end: Callable[[], None]) -> None:
    """Copy the client's lines to the SDK, screened, none longer than `limit`; when the
    client's stdin ends, end the SDK's and call `on_end`."""
    try:
        with source, sink:
            while line := source.readline(limit + 1):
                if len(line) > limit and not line.endswith(b"\n"):
                    while (rest := source.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass  # skip the rest of the line, a MiB at a time
                    log.warning("dropped a message longer than %d bytes", limit)
                    found = LEADING_ID.match(line, 0, 4096)
                    ident = json.loads(found.group(1)) if found else None
                    for answer in _answerable({"id": ident, "method": ""},
                                              f"message longer than {limit} bytes"):
                        sink.write(answer)
                        sink.flush()
                    continue
                for screened_line in screened(line):
                    sink.write(screened_line)
                    sink.flush()
    except OSError:  # the SDK stopped reading: the session is over
        pass
    on_end()


def guard_stdin(on_end: Callable[[], None], limit: int = MAX_MESSAGE) -> threading.Thread:
    """Put a pipe in place of stdin, fed from the real one by a thread that screens each
    line (screened()) and drops lines over `limit` bytes; the SDK then reads the pipe.
    `on_end` runs once the client's stdin has ended (its way to end the session)."""
    source = os.fdopen(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3), "rb")
    read_end, write_end = os.pipe()
    os.dup2(read_end, 0)
    os.close(read_end)
    sink = os.fdopen(write_end, "wb")
    thread = threading.Thread(target=_pump, args=(source, sink, limit, on_end), name="mcp-stdin",
                              daemon=True)
    thread.start()
    return thread


def serve(*, template: str, namespace: str = "default", run_timeout: float | None = None,
          client_options: dict[str, Any] | None = None) -> int:
    """Serve one MCP session on stdin/stdout; returns the exit status (0)."""
    options = dict(client_options or {})
    if run_timeout:
        options["run_timeout"] = run_timeout

    def make_client() -> SandboxClient:
        return SandboxClient(template, namespace, warm_pool=0, **options)

    session = SessionSandbox(make_client)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            session.close()
        finally:
            # Die of the signal, as expected of us, now that nothing is left behind.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # A closed stdin ends the session (the MCP stdio transport's shutdown): the SDK sends no
    # answer after it, so a tool call still running is cut short with its sandbox now, not
    # when its command ends.
    guard_stdin(on_end=session.close)
    try:
        build_server(session).run("stdio")
    finally:
        session.close()
    return 0
