"""The runtime API without IO: the Call, the replay rule, errors, commands and their output.

Used by SandboxClient (agentic_sandbox._client), which does the IO with httpx's sync
client, and AsyncSandboxClient (agentic_sandbox._async_client), which does it with httpx's
AsyncClient (docs/client.md, "Async client"): everything that is not IO lives here, once. A
Call says what to send and how to read the answer; `replay_allowed()` is THE replay rule;
`retry_wait()` is THE rule for a 503 with Retry-After (a sandbox waking up behind the router);
`status_error()` and `transport_error()` map failures into our error tree; `command_call()`
is run() and stream(); CommandOutput turns a streamed answer's bytes into chunks and an exit
status; Answer gathers an answer's body, bounded. The file calls are in
agentic_sandbox._protocol_files, the background-process calls in
agentic_sandbox._protocol_processes; both build on this module. Nothing here sends a byte
or knows how a backend reaches its sandbox.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx2

from agentic_sandbox._exceptions import (
    SandboxConnectionError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from agentic_sandbox._models import ExecutionResult, OutputChunk
from sandbox_common.contract import NOT_FORWARDED_HEADER

__all__ = ["CONNECT_TIMEOUT_S", "MAX_ANSWER", "MAX_ERROR_BODY", "RUN_GRACE_S", "Answer", "Call",
           "CommandOutput",
           "command_call", "decode", "exit_and_signal", "health_call", "replay_allowed",
           "retry_wait", "status_error", "timeout_of", "transport_error", "typed",
           "unexpected", "url_path"]

T = TypeVar("T")

# Getting a connection (a TCP connect, a channel from `runsc exec`) may take this long.
CONNECT_TIMEOUT_S: Final = 10.0
# Past a command's own deadline the runtime still kills its tree and sends the output;
# the HTTP read deadline waits this much longer before calling the runtime unresponsive.
RUN_GRACE_S: Final = 30.0
MAX_ERROR_BODY: Final = 64 * 1024
# The most the client holds of one JSON answer, stream line or streamed command's output.
# A runtime's largest answer (run() at its default 1 MiB per stream, JSON-escaped: at most
# 6 bytes a byte) is a fifth of it; a hostile or broken sandbox sending more (an endless
# body) gets an error, not the host's memory.
MAX_ANSWER: Final = 64 * 1024 * 1024
ATTEMPTS: Final = 2  # a call is sent at most twice (replay_allowed says when)
# The wait between two sends after a 503 with Retry-After, whatever the header says.
MIN_RETRY_WAIT_S: Final = 0.1
MAX_RETRY_WAIT_S: Final = 5.0


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


def retry_wait(call: Call[Any], status: int, headers: Mapping[str, str], *, elapsed: float,
               budget: float, now: float) -> float | None:
    """THE rule for a 503 with Retry-After: seconds to wait before sending `call` again, or
    None to fail with the answer now. `headers` are the answer's (case-insensitive, as
    httpx's), `elapsed` the seconds since `call` was first sent, `budget` the most it may
    take in all (the client's sandbox_ready_timeout), `now` the wall clock (for a
    Retry-After given as a date).

    The router answers 503 with Retry-After while a suspended sandbox wakes past its own
    bound (and when it cannot confirm a Sandbox yet). A GET or HEAD may be sent again after
    any such 503. A POST only when the answer says the router forwarded nothing
    (NOT_FORWARDED_HEADER, which the router strips from a sandbox's own answers): a 503 the
    sandbox itself sent may come after a command ran. Each wait is what Retry-After says,
    within MIN_RETRY_WAIT_S..MAX_RETRY_WAIT_S, and none ends past `budget`.
    """
    if status != 503:
        return None
    lowered = {key.lower(): value for key, value in headers.items()}
    header = lowered.get("retry-after")
    if header is None:
        return None
    if call.method not in ("GET", "HEAD") and \
            lowered.get(NOT_FORWARDED_HEADER.lower()) != "true":
        return None
    delay = _retry_after_seconds(header.strip(), now)
    if delay is None:
        return None
    wait = min(max(delay, MIN_RETRY_WAIT_S), MAX_RETRY_WAIT_S)
    return wait if elapsed + wait <= budget else None


def _retry_after_seconds(value: str, now: float) -> float | None:
    """Retry-After's delay-seconds, or its HTTP-date as seconds from `now`; None if neither."""
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - now


def transport_error(exc: Exception, what: str) -> SandboxError:
    """A failure below HTTP (httpx's TransportError, or a broken stream) as ours."""
    if isinstance(exc, httpx2.ConnectTimeout):
        return SandboxConnectionError(f"{what}: could not connect in time ({exc})")
    if isinstance(exc, httpx2.TimeoutException):
        return SandboxTimeoutError(f"{what}: no answer in time ({exc})")
    return SandboxConnectionError(f"{what}: {exc or type(exc).__name__}")


def status_error(call: Call[Any], status: int, reason: str, body: bytes,
                 routed: bool) -> SandboxError:
    """The error for an answer whose status is not 2xx (`routed`: through the router). A 3xx
    is one too: redirects are never followed (the bearer token must not travel to another
    host), and a redirect's body (a gateway's login page) is no file's content."""
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


class Answer:
    """A successful answer's body, gathered as it arrives (`feed`), bounded: a JSON answer
    larger than MAX_ANSWER, or still arriving `call.timeout` seconds after its head came,
    is an error (SandboxConnectionError, SandboxTimeoutError), so that an endless or
    trickled body cannot fill the host's memory or hold a call past its timeout. A raw
    answer (read(): the file the caller asked for, its size declared) is not bounded."""

    def __init__(self, call: Call[Any]) -> None:
        self.call = call
        self.parts: list[bytes] = []
        self.size = 0
        self.deadline = (None if call.raw or call.timeout is None
                         else time.monotonic() + call.timeout)

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if not self.call.raw and self.size > MAX_ANSWER:
            raise SandboxConnectionError(
                f"{self.call.what}: the answer is larger than {MAX_ANSWER} bytes")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SandboxTimeoutError(
                f"{self.call.what}: the answer was still arriving {self.call.timeout}s later")
        self.parts.append(data)

    async def afeed(self, data: bytes) -> None:
        """feed(), as AsyncSandboxClient's answers take it."""
        self.feed(data)

    def result(self) -> Any:
        """The call's result (decode)."""
        return decode(self.call, b"".join(self.parts))


def decode(call: Call[T], body: bytes) -> T:
    """A successful answer's body as the call's result."""
    if call.raw:
        return call.parse(body)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise SandboxConnectionError(f"{call.what}: the answer is not JSON") from exc
    try:
        return call.parse(answer)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        # A field missing or of the wrong type: the SDK's error, never a bare Python one.
        raise SandboxConnectionError(f"{call.what}: unexpected answer ({exc})") from exc


# -- commands and health (the file calls: _protocol_files; processes: _protocol_processes) ----


def unexpected(what: str) -> SandboxConnectionError:
    """The error for an answer of the wrong shape (the runtime is not the one we speak to)."""
    return SandboxConnectionError(f"{what}: unexpected answer")


_ABSENT: Any = object()


def typed(answer: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
          default: Any = _ABSENT) -> Any:
    """answer[key] if it is of `kind` (a bool is no int, an int is no bool); `default` when
    it is absent or null, if one is given. Anything else raises TypeError, which decode()
    turns into the SDK's "unexpected answer": a hostile or foreign runtime's field is never
    coerced into a plausible value ("no" read as timed_out=True, 1.5 as exit code 1)."""
    if not isinstance(answer, Mapping):
        raise TypeError(f"expected an object with {key!r}, got {type(answer).__name__}")
    value = answer.get(key)
    if value is None and default is not _ABSENT:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TypeError(f"{key!r} is {type(value).__name__}, not "
                        f"{' or '.join(k.__name__ for k in kinds)}")
    return value


def exit_and_signal(answer: Mapping[str, Any]) -> tuple[int, str | None]:
    """The exit code and signal name of an answer. A runtime older than the `signal` field
    reports a signal N as exit code -N: that becomes 128 + N and the signal's name too."""
    code = typed(answer, "exit_code", int, None)
    if code is None:
        return -1, None
    name = typed(answer, "signal", str, None)
    if code < 0 and name is None:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        code = 128 - code
    return code, name


def execution_result(answer: Any) -> ExecutionResult:
    if not isinstance(answer, dict):
        raise unexpected("POST /execute")
    exit_code, signal_name = exit_and_signal(answer)
    return ExecutionResult(
        stdout=typed(answer, "stdout", str, ""), stderr=typed(answer, "stderr", str, ""),
        exit_code=exit_code, signal=signal_name,
        timed_out=typed(answer, "timed_out", bool, False),
        stdout_truncated=typed(answer, "stdout_truncated", bool, False),
        stderr_truncated=typed(answer, "stderr_truncated", bool, False))


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


def health_call(timeout: float | None) -> Call[bool]:
    return Call("GET", "/", timeout,
                lambda answer: isinstance(answer, dict) and answer.get("status") == "ok")


# -- a streamed command ------------------------------------------------------------------------


def _output_chunk(event: dict[str, Any]) -> OutputChunk | None:
    """A stream line as its output chunk; None for the exit status, whose fields must be
    sound too. A field missing or of the wrong type is the SDK's error."""
    try:
        if "stream" not in event:
            execution_result(event)
            return None
        return OutputChunk(stream=typed(event, "stream", str), data=typed(event, "data", str))
    except (TypeError, ValueError) as exc:
        raise SandboxConnectionError(f"the runtime sent a malformed stream line ({exc})") \
            from exc


class CommandOutput:
    """What a streamed command has sent so far: `feed()` takes the answer's bytes as they
    come (newline-delimited JSON events) and returns the output chunks they complete; the
    last event is the exit status. CommandStream (sync) and an async stream add the IO."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._pending = b""
        self._held = 0  # bytes received, all held (as pending or as output)
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
        self._held += len(data)
        if self._held > MAX_ANSWER:
            raise SandboxConnectionError(
                f"the output stream is larger than {MAX_ANSWER} bytes")
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
            chunk = _output_chunk(event)
            if chunk is None:
                self._final = event
            else:
                (self._stdout if chunk.stream == "stdout" else self._stderr).append(chunk.data)
                chunks.append(chunk)
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
        return self._final is not None and typed(self._final, "timed_out", bool, False)

    @property
    def result(self) -> ExecutionResult | None:
        """Everything the stream carried, as run() would have returned it."""
        if self._final is None:
            return None
        return execution_result(self._final | {"stdout": "".join(self._stdout),
                                               "stderr": "".join(self._stderr)})

