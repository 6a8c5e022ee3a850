"""The runtime API without IO: each call's request, its answer's parsing, errors, replays.

Used by SandboxClient (agentic_sandbox._client), which does the IO with httpx's sync
client, and meant for an AsyncSandboxClient doing the same IO with httpx's AsyncClient
(docs/client.md, "Async client"): everything that is not IO lives here, once. A Call says
what to send and how to read the answer; `replay_allowed()` is THE replay rule;
`status_error()` and `transport_error()` map failures into our error tree; CommandOutput
turns a streamed answer's bytes into chunks and an exit status. Nothing here sends a byte
or knows how a backend reaches its sandbox.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx2

from agentic_sandbox._exceptions import (
    SandboxConnectionError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from agentic_sandbox._models import (
    ArchiveSummary,
    ExecutionResult,
    FileEntry,
    FileStat,
    OutputChunk,
    ProcessInfo,
    ProcessOutput,
)

__all__ = ["CONNECT_TIMEOUT_S", "MAX_ERROR_BODY", "RUN_GRACE_S", "Call", "CommandOutput",
           "archive_in_call", "archive_out_call", "command_call", "copy_call", "decode",
           "download_call", "exists_call", "health_call", "kill_call", "list_call",
           "mkdir_call", "move_call", "output_call", "process_call", "processes_call",
           "remove_call", "replay_allowed", "start_call", "stat_call", "status_error",
           "timeout_of", "transport_error", "upload_call", "url_path", "wait_call",
           "wait_slice"]

T = TypeVar("T")

# Getting a connection (a TCP connect, a channel from `runsc exec`) may take this long.
CONNECT_TIMEOUT_S: Final = 10.0
# Past a command's own deadline the runtime still kills its tree and sends the output;
# the HTTP read deadline waits this much longer before calling the runtime unresponsive.
RUN_GRACE_S: Final = 30.0
MAX_ERROR_BODY: Final = 64 * 1024
ATTEMPTS: Final = 2  # a call is sent at most twice (replay_allowed says when)


def url_path(path: str) -> str:
    """Quote a sandbox path for a URL without letting anything normalise it on the way.

    httpx (like every URL library) removes `.` and `..` segments, which would turn
    `../../etc/passwd` into a different file; the runtime must see the path as given (it
    confines it and answers 403), so dot segments travel percent-encoded.
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if "\x00" in path:
        raise ValueError("path must not contain NUL")
    parts = []
    for part in path.split("/"):
        if part in (".", ".."):
            parts.append(part.replace(".", "%2E"))
        else:
            parts.append(quote(part, safe=""))
    return "/".join(parts)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One runtime API call: what to send, and how its answer becomes a result."""

    method: str
    path: str  # already quoted (url_path)
    timeout: float | None  # the read deadline; None: no client-side limit
    parse: Callable[[Any], T] = field(repr=False)  # the JSON answer (or bytes) -> result
    json: Mapping[str, Any] | None = None
    files: Mapping[str, Any] | None = None
    # A raw body: bytes, or an iterable of bytes sent as it is produced (iterated afresh
    # when the call is sent again, so not a generator).
    content: Any = None
    headers: Mapping[str, str] | None = None
    raw: bool = False  # the answer is bytes, not JSON

    @property
    def what(self) -> str:
        """How errors name the call."""
        return f"{self.method} {self.path.split('?')[0][:120]}"


def timeout_of(call: Call[Any]) -> httpx2.Timeout:
    return httpx2.Timeout(call.timeout, connect=CONNECT_TIMEOUT_S)


def replay_allowed(call: Call[Any], exc: httpx2.HTTPError, attempt: int) -> bool:
    """THE replay rule: may `call`, which failed with `exc` on try number `attempt` (0, 1),
    be sent once more?

    A GET (read, list, exists, health) may: asking again changes nothing. A POST (run,
    stream, write) only when it provably never left this process: no connection was made
    (ConnectError, ConnectTimeout: a refused TCP connect, a channel that could not be
    opened). After a reset, a protocol error or a read timeout it is never sent again,
    because the command may already have run. A read timeout is not retried for a GET
    either: it would only wait as long again. Transports never retry on their own.
    """
    if attempt + 1 >= ATTEMPTS or isinstance(exc, httpx2.ReadTimeout):
        return False
    never_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)
    return call.method in ("GET", "HEAD") or never_sent


def transport_error(exc: Exception, what: str) -> SandboxError:
    """A failure below HTTP (httpx's TransportError, or a broken stream) as ours."""
    if isinstance(exc, httpx2.ConnectTimeout):
        return SandboxConnectionError(f"{what}: could not connect in time ({exc})")
    if isinstance(exc, httpx2.TimeoutException):
        return SandboxTimeoutError(f"{what}: no answer in time ({exc})")
    return SandboxConnectionError(f"{what}: {exc or type(exc).__name__}")


def status_error(call: Call[Any], status: int, reason: str, body: bytes,
                 routed: bool) -> SandboxError:
    """The error for an answer with status >= 400 (`routed`: through the router)."""
    message = f"{call.what}: {status} {_error_message(body, reason)}"
    if status in (502, 503) and routed:
        # The router could not reach the sandbox (or is not ready to).
        return SandboxConnectionError(message)
    if status == 504:
        return SandboxTimeoutError(message)
    return SandboxRequestError(message, status_code=status, body=body)


def _error_message(body: bytes, reason: str) -> str:
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or reason or "error"


def decode(call: Call[T], body: bytes) -> T:
    """A successful answer's body as the call's result."""
    if call.raw:
        return call.parse(body)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise SandboxConnectionError(f"{call.what}: the answer is not JSON") from exc
    return call.parse(answer)


# -- the calls ---------------------------------------------------------------------------------


def _unexpected(what: str) -> SandboxConnectionError:
    return SandboxConnectionError(f"{what}: unexpected answer")


def exit_and_signal(answer: Mapping[str, Any]) -> tuple[int, str | None]:
    """The exit code and signal name of an answer. A runtime older than the `signal` field
    reports a signal N as exit code -N: that becomes 128 + N and the signal's name too."""
    if answer.get("exit_code") is None:
        return -1, None
    code = int(answer["exit_code"])
    name = answer.get("signal")
    if code < 0 and name is None:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        code = 128 - code
    return code, str(name) if name is not None else None


def execution_result(answer: Any) -> ExecutionResult:
    if not isinstance(answer, dict):
        raise _unexpected("POST /execute")
    exit_code, signal_name = exit_and_signal(answer)
    return ExecutionResult(
        stdout=str(answer.get("stdout", "")), stderr=str(answer.get("stderr", "")),
        exit_code=exit_code, signal=signal_name,
        timed_out=bool(answer.get("timed_out", False)),
        stdout_truncated=bool(answer.get("stdout_truncated", False)),
        stderr_truncated=bool(answer.get("stderr_truncated", False)))


def command_call(command: str, limit: float | None, env: Mapping[str, str] | None,
                 cwd: str | None, *, stream: bool = False) -> Call[ExecutionResult]:
    """run() (POST /execute) or stream() (POST /execute/stream); `limit` is the command's
    own timeout, which the runtime enforces; the read deadline adds RUN_GRACE_S."""
    if not isinstance(command, str):
        raise TypeError(f"command must be a str, not {type(command).__name__}")
    body: dict[str, Any] = {"command": command}
    if limit is not None:
        body["timeout"] = limit
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    return Call("POST", "/execute/stream" if stream else "/execute",
                None if limit is None else limit + RUN_GRACE_S, execution_result, json=body)


def upload_call(path: str, content: str | bytes | IO[bytes],
                timeout: float | None) -> Call[None]:
    """write(): the bytes, or a binary file object streamed from its start (it is read a
    piece at a time, never whole; sent again, it is read again from the start)."""
    data: bytes | IO[bytes]
    if isinstance(content, str):
        data = content.encode("utf-8")
    elif isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
    elif callable(getattr(content, "read", None)) and callable(getattr(content, "seek", None)):
        data = content
    else:
        raise TypeError(f"content must be str, bytes or a binary file object, not "
                        f"{type(content).__name__}")
    _check_path(path)
    return Call("POST", "/upload", timeout, lambda answer: None,
                files={"file": (path, data, "application/octet-stream")})


def _check_path(path: str, what: str = "path") -> None:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} must be a non-empty string")


def download_call(path: str, timeout: float | None) -> Call[bytes]:
    return Call("GET", "/download/" + url_path(path), timeout, bytes, raw=True)


def _entries(answer: Any) -> list[FileEntry]:
    if not isinstance(answer, list):
        raise _unexpected("GET /list")
    return [FileEntry(name=str(e["name"]), type=str(e["type"]), size=int(e["size"]))
            for e in answer]


def list_call(path: str, timeout: float | None) -> Call[list[FileEntry]]:
    return Call("GET", "/list/" + url_path(path), timeout, _entries)


def exists_call(path: str, timeout: float | None) -> Call[bool]:
    return Call("GET", "/exists/" + url_path(path), timeout,
                lambda answer: bool(isinstance(answer, dict) and answer.get("exists")))


def _stat(answer: Any) -> FileStat:
    if not isinstance(answer, dict):
        raise _unexpected("GET /stat")
    return FileStat(path=str(answer["path"]), type=str(answer["type"]),
                    size=int(answer["size"]), mode=int(answer["mode"]),
                    mtime=float(answer["mtime"]))


def stat_call(path: str, timeout: float | None) -> Call[FileStat]:
    return Call("GET", "/stat/" + url_path(path), timeout, _stat)


def mkdir_call(path: str, parents: bool, timeout: float | None) -> Call[None]:
    _check_path(path)
    return Call("POST", "/mkdir", timeout, lambda answer: None,
                json={"path": path, "parents": bool(parents)})


def remove_call(path: str, recursive: bool, timeout: float | None) -> Call[None]:
    _check_path(path)
    return Call("POST", "/remove", timeout, lambda answer: None,
                json={"path": path, "recursive": bool(recursive)})


def move_call(source: str, destination: str, timeout: float | None) -> Call[None]:
    _check_path(source, "source")
    _check_path(destination, "destination")
    return Call("POST", "/move", timeout, lambda answer: None,
                json={"source": source, "destination": destination})


def archive_summary(answer: Any) -> ArchiveSummary:
    if not isinstance(answer, dict):
        raise _unexpected("an archive or copy")
    return ArchiveSummary(files=int(answer.get("files", 0)),
                          directories=int(answer.get("directories", 0)),
                          symlinks=int(answer.get("symlinks", 0)),
                          bytes=int(answer.get("bytes", 0)),
                          skipped=int(answer.get("skipped", 0)))


def copy_call(source: str, destination: str, timeout: float | None) -> Call[ArchiveSummary]:
    _check_path(source, "source")
    _check_path(destination, "destination")
    return Call("POST", "/copy", timeout, archive_summary,
                json={"source": source, "destination": destination})


def archive_in_call(remote_dir: str, body: Iterable[bytes],
                    timeout: float | None) -> Call[ArchiveSummary]:
    """upload_dir(): `body` is the directory's tar stream (re-iterable), sent chunked."""
    _check_path(remote_dir, "remote_dir")
    return Call("POST", "/archive/" + url_path(remote_dir), timeout, archive_summary,
                content=body, headers={"Content-Type": "application/x-tar"})


def archive_out_call(remote_dir: str, timeout: float | None) -> Call[None]:
    """download_dir(): the answer is a tar stream, read as it comes (not decoded here)."""
    return Call("GET", "/archive/" + url_path(remote_dir), timeout, lambda body: None,
                raw=True)


def health_call(timeout: float | None) -> Call[bool]:
    return Call("GET", "/", timeout,
                lambda answer: isinstance(answer, dict) and answer.get("status") == "ok")


# -- background processes -------------------------------------------------------------------

# The runtime holds one wait request at most this long; a longer wait is several requests.
MAX_WAIT_SLICE_S: Final = 30.0


def process_info(answer: Any) -> ProcessInfo:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        raise _unexpected("/processes")
    running = bool(answer.get("running"))
    exit_code, signal_name = (None, None) if running else exit_and_signal(answer)
    return ProcessInfo(
        id=answer["id"], command=str(answer.get("command", "")), running=running,
        exit_code=exit_code, signal=signal_name, timed_out=bool(answer.get("timed_out")),
        started_at=answer.get("started_at"), ended_at=answer.get("ended_at"))


def _process_output(answer: Any) -> ProcessOutput:
    info = process_info(answer)
    return ProcessOutput(stdout=str(answer.get("stdout", "")),
                         stderr=str(answer.get("stderr", "")),
                         stdout_truncated=bool(answer.get("stdout_truncated")),
                         stderr_truncated=bool(answer.get("stderr_truncated")), info=info)


def _process_path(process_id: str, action: str = "") -> str:
    if not isinstance(process_id, str) or not process_id:
        raise ValueError("a process id is a non-empty string")
    return "/processes/" + url_path(process_id) + (f"/{action}" if action else "")


def start_call(command: str, limit: float | None, env: Mapping[str, str] | None,
               cwd: str | None, timeout: float | None) -> Call[ProcessInfo]:
    """start() (POST /processes): `limit` is the process's own timeout (None: the
    runtime's longest, a day by default); `timeout` the call's."""
    body = command_call(command, limit, env, cwd).json
    return Call("POST", "/processes", timeout, process_info, json=body)


def processes_call(timeout: float | None) -> Call[list[ProcessInfo]]:
    def parse(answer: Any) -> list[ProcessInfo]:
        if not isinstance(answer, list):
            raise _unexpected("GET /processes")
        return [process_info(item) for item in answer]
    return Call("GET", "/processes", timeout, parse)


def process_call(process_id: str, timeout: float | None) -> Call[ProcessInfo]:
    return Call("GET", _process_path(process_id), timeout, process_info)


def output_call(process_id: str, timeout: float | None) -> Call[ProcessOutput]:
    return Call("GET", _process_path(process_id, "output"), timeout, _process_output)


def kill_call(process_id: str, timeout: float | None) -> Call[ProcessInfo]:
    return Call("POST", _process_path(process_id, "kill"), timeout, process_info)


def wait_call(process_id: str, wait: float) -> Call[ProcessInfo]:
    """One wait request of at most `wait` seconds (wait_slice); its read deadline adds
    RUN_GRACE_S."""
    return Call("POST", _process_path(process_id, "wait"), wait + RUN_GRACE_S, process_info,
                json={"timeout": wait})


def wait_slice(deadline: float | None, now: float) -> float:
    """How long the next wait request may wait: what is left of `deadline` (None: no
    end), at most MAX_WAIT_SLICE_S."""
    if deadline is None:
        return MAX_WAIT_SLICE_S
    return max(0.0, min(MAX_WAIT_SLICE_S, deadline - now))


# -- a streamed command ------------------------------------------------------------------------


class CommandOutput:
    """What a streamed command has sent so far: `feed()` takes the answer's bytes as they
    come (newline-delimited JSON events) and returns the output chunks they complete; the
    last event is the exit status. CommandStream (sync) and an async stream add the IO."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._pending = b""
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._final: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self._final is not None

    def feed(self, data: bytes) -> list[OutputChunk]:
        """The chunks completed by `data`; nothing after the exit status counts."""
        chunks: list[OutputChunk] = []
        self._pending += data
        while self._final is None and b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise SandboxConnectionError("the runtime sent a malformed stream line") \
                    from exc
            if not isinstance(event, dict):
                raise SandboxConnectionError("the runtime sent a malformed stream line")
            if "stream" in event:
                chunk = OutputChunk(stream=str(event["stream"]), data=str(event["data"]))
                (self._stdout if chunk.stream == "stdout" else self._stderr).append(chunk.data)
                chunks.append(chunk)
            else:
                self._final = event
        return chunks

    def end(self) -> None:
        """The answer ended: an error unless the exit status came."""
        if self._final is None and self._pending.strip():
            self.feed(b"\n")  # a last event without its newline
        if self._final is None:
            raise SandboxConnectionError(
                "the output stream ended before the command's exit status arrived")

    @property
    def exit_code(self) -> int | None:
        """The command's exit status once the stream ended, else None."""
        return None if self._final is None else exit_and_signal(self._final)[0]

    @property
    def signal(self) -> str | None:
        """The signal that killed the command's shell, once the stream ended (see
        ExecutionResult.signal)."""
        return None if self._final is None else exit_and_signal(self._final)[1]

    @property
    def timed_out(self) -> bool:
        return bool(self._final and self._final.get("timed_out"))

    @property
    def result(self) -> ExecutionResult | None:
        """Everything the stream carried, as run() would have returned it."""
        if self._final is None:
            return None
        return execution_result(self._final | {"stdout": "".join(self._stdout),
                                               "stderr": "".join(self._stderr)})
