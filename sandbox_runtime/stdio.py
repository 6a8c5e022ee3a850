"""`sandbox-runtime --stdio`: the same WSGI app, served over stdin/stdout instead of TCP.

Who calls it: launch.py, for the local gVisor backend, which starts the runtime inside a
`runsc` sandbox with --network=none (no TCP at all) and talks to it through the process's
stdin and stdout (launch.py takes them off fds 0 and 1 first), and for `sandbox-runtime
--stdio`. This module is the HTTP/1.1 framing and the request loop only: the app is app.py's.

The contract, exactly:

- stdin carries HTTP/1.1 requests, one after another on the same stream (keep-alive). Each
  request is a request line, headers, then a body framed by `Content-Length` or by
  `Transfer-Encoding: chunked` (no header: no body). `Expect: 100-continue` is answered with
  an interim `100 Continue`.
- stdout carries exactly one HTTP/1.1 response per request, in request order, and nothing
  else. A response is framed by `Content-Length` when the app knows the size, otherwise by
  `Transfer-Encoding: chunked` (each chunk is flushed as soon as the app yields it, so
  `POST /execute/stream` streams; an empty chunk flushes the head, which a stream sends
  before its first output). Bodies of HEAD, 1xx, 204 and 304 answers are empty.
- Requests are handled one at a time; the next request is read only after the previous
  response was written completely and its unread request body discarded.
- The server stops with exit status 0 when stdin reaches end-of-file between requests, or
  after answering a request that carries `Connection: close` (or is HTTP/1.0). A malformed
  request gets a 400 answer with `Connection: close`, then the server exits with status 1.
- Logs go to stderr only. File descriptor 1 is pointed at stderr at start-up (launch.py),
  so nothing but responses (not a stray print, not a child process) can reach the response
  stream.
- When stdin is a socket (the local backend's socketpair), a hang-up of the other end while
  a command runs kills the command's tree at once, as over TCP; a pipe is not watched (its
  writer may close right after the last request and still expect the answers).

It must not spawn threads that write to the response stream, and must not read past one
request's body before that request is answered.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterable
from typing import IO, Any

from sandbox_runtime.web import CLIENT_SOCKET

log = logging.getLogger(__name__)

MAX_LINE = 65536
MAX_HEADERS = 100
NO_BODY_STATUS = {204, 304}


_HEX = "0123456789ABCDEFabcdef"
_HEX_BYTE: dict[bytes, bytes] = {}


def unquote_to_bytes(text: str) -> bytes:
    """urllib.parse.unquote_to_bytes, without importing urllib.parse (and ipaddress):
    about 10 ms of a local sandbox's cold start under gVisor's ptrace platform. Same
    result: UTF-8 bytes of `text` with each valid %XX decoded, anything else kept."""
    data = text.encode("utf-8")
    if b"%" not in data:
        return data
    if not _HEX_BYTE:
        _HEX_BYTE.update({(a + b).encode(): bytes.fromhex(a + b) for a in _HEX for b in _HEX})
    first, *rest = data.split(b"%")
    out = [first]
    for item in rest:
        byte = _HEX_BYTE.get(item[:2])
        out.append(byte + item[2:] if byte is not None else b"%" + item)
    return b"".join(out)


class BadRequestLine(Exception):
    """The stream does not hold a well-formed HTTP/1.1 request; it cannot be resynchronised."""


class LengthReader(io.RawIOBase):
    """A request body of known length: never reads past its end."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream = stream
        self.left = length

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.stream.read(size)
        if not data:
            raise BadRequestLine("body ended before its Content-Length")
        self.left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = self.left if size is None or size < 0 else min(size, self.left)
        line = self.stream.readline(limit) if limit > 0 else b""
        self.left -= len(line)
        return line

    def drain(self) -> None:
        while self.read(65536):
            pass


class ChunkedReader(io.RawIOBase):
    """A `Transfer-Encoding: chunked` request body, decoded as it is read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.chunk_left = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        line = self.stream.readline(MAX_LINE)
        try:
            self.chunk_left = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequestLine("bad chunk size line") from None
        if self.chunk_left < 0:
            raise BadRequestLine("bad chunk size line")
        if self.chunk_left == 0:
            while True:  # trailers, up to the blank line
                trailer = self.stream.readline(MAX_LINE)
                if trailer in (b"\r\n", b"\n", b""):
                    break
            self.done = True

    def read(self, size: int | None = -1) -> bytes:
        out = bytearray()
        want = -1 if size is None else size
        while not self.done and (want < 0 or len(out) < want):
            if self.chunk_left == 0:
                self._next_chunk()
                continue
            take = self.chunk_left if want < 0 else min(self.chunk_left, want - len(out))
            data = self.stream.read(take)
            if not data:
                raise BadRequestLine("body ended inside a chunk")
            out += data
            self.chunk_left -= len(data)
            if self.chunk_left == 0 and self.stream.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                raise BadRequestLine("chunk not followed by CRLF")
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            ch = self.read(1)
            if not ch:
                break
            out += ch
            if ch == b"\n":
                break
        return bytes(out)

    def drain(self) -> None:
        while self.read(65536):
            pass


def read_request(stream: IO[bytes]) -> tuple[dict[str, Any], LengthReader | ChunkedReader,
                                              bool, bool] | None:
    """Parse one request head; return (environ, body, keep_alive, expects_continue)."""
    line = stream.readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):  # tolerate blank lines between requests (RFC 9112 2.2)
        line = stream.readline(MAX_LINE)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise BadRequestLine("request line too long or cut")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequestLine(f"bad request line {line[:100]!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    while True:
        hline = stream.readline(MAX_LINE)
        if not hline.endswith(b"\n"):
            raise BadRequestLine("header line too long or cut")
        if hline in (b"\r\n", b"\n"):
            break
        if len(headers) >= MAX_HEADERS:
            raise BadRequestLine("too many headers")
        name, sep, value = hline.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequestLine(f"bad header line {hline[:100]!r}")
        headers.append((name, value.strip()))
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": target,
        "SERVER_NAME": "stdio",
        "SERVER_PORT": "0",
        "REMOTE_ADDR": "stdio",
        "SERVER_PROTOCOL": version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    lowered: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
        if key == "content-type":
            environ["CONTENT_TYPE"] = value
        elif key == "content-length":
            environ["CONTENT_LENGTH"] = value
        else:
            wsgi_key = "HTTP_" + name.upper().replace("-", "_")
            environ[wsgi_key] = f"{environ[wsgi_key]},{value}" if wsgi_key in environ else value
    body: LengthReader | ChunkedReader
    # Either reader ends where the body ends: the app may read to end-of-file.
    environ["wsgi.input_terminated"] = True
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        body = ChunkedReader(stream)
        environ.pop("CONTENT_LENGTH", None)
    else:
        raw_length = lowered.get("content-length", "0") or "0"
        if not raw_length.isdigit():
            raise BadRequestLine("bad Content-Length")
        body = LengthReader(stream, int(raw_length))
    environ["wsgi.input"] = body
    connection = lowered.get("connection", "").lower()
    keep_alive = version == "HTTP/1.1" and "close" not in connection
    expects_continue = lowered.get("expect", "").lower() == "100-continue"
    return environ, body, keep_alive, expects_continue


class ResponseWriter:
    """start_response plus framing of the app's iterable onto the response stream."""

    def __init__(self, out: IO[bytes], method: str, keep_alive: bool) -> None:
        self.out = out
        self.method = method
        self.keep_alive = keep_alive
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.started = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and self.started:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, list(headers)
        return self._write_direct

    def _write_direct(self, data: bytes) -> None:
        raise RuntimeError("the write() callable is not supported; return an iterable")

    def send(self, body: Iterable[bytes]) -> bool:
        """Frame and write the answer; False when the app gave less than its declared
        Content-Length (the stream's framing is lost: the server must stop). A body never
        carries more than it declared: anything past it is dropped."""
        code = int(self.status.split(" ", 1)[0])
        names = {name.lower(): value for name, value in self.headers}
        no_body = self.method == "HEAD" or code < 200 or code in NO_BODY_STATUS
        chunked = not no_body and "content-length" not in names
        declared = None if no_body or chunked else int(names["content-length"])
        headers = [(n, v) for n, v in self.headers
                   if n.lower() not in ("connection", "transfer-encoding")]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Connection", "keep-alive" if self.keep_alive else "close"))
        head = f"HTTP/1.1 {self.status}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
        self.out.write(head.encode("latin-1") + b"\r\n")
        self.started = True
        sent = 0
        for data in body:
            if not data or no_body:
                if chunked:
                    self.out.flush()  # an empty chunk: send what we hold (the head) now
                continue
            if declared is not None:
                data = data[:declared - sent]
                if not data:
                    break
            if chunked:
                self.out.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.out.write(data)
            sent += len(data)
            self.out.flush()
        if chunked:
            self.out.write(b"0\r\n\r\n")
        self.out.flush()
        return declared is None or sent == declared


def serve(app: Callable[..., Iterable[bytes]], stdin: IO[bytes], stdout: IO[bytes],
          client: socket.socket | None = None,
          on_busy: Callable[[bool], None] | None = None) -> int:
    """Answer requests from `stdin` on `stdout` until end-of-file; the exit status.

    `client`, when given, is stdin's socket: the app kills a running command when it
    hangs up. `on_busy`, when given, is told when each request starts and ends."""
    while True:
        try:
            parsed = read_request(stdin)
        except BadRequestLine as exc:
            log.warning("stdio: malformed request: %s", exc)
            message = b'{"error": "malformed HTTP request"}'
            stdout.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(message), message))
            stdout.flush()
            return 1
        if parsed is None:
            return 0
        environ, body, keep_alive, expects_continue = parsed
        if client is not None:
            environ[CLIENT_SOCKET] = client
        if expects_continue:
            stdout.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            stdout.flush()
        writer = ResponseWriter(stdout, environ["REQUEST_METHOD"], keep_alive)
        if on_busy is not None:
            on_busy(True)
        try:
            result = app(environ, writer.start_response)
            try:
                whole = writer.send(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            if on_busy is not None:
                on_busy(False)
        if not whole:
            log.warning("stdio: %s %s gave less than its Content-Length; closing",
                        environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
            return 1
        try:
            body.drain()
        except BadRequestLine as exc:
            log.warning("stdio: request body cut: %s", exc)
            return 1
        if not keep_alive:
            return 0


def serve_fds(app: Callable[..., Iterable[bytes]], request_fd: int, response_fd: int,
              on_busy: Callable[[bool], None] | None = None) -> int:
    """serve() on two descriptors (launch.take_streams gives them), which it closes. When
    the request stream is a socket (the local backend's socketpair), a hang-up of its other
    end while a command runs kills the command, as over TCP."""
    watched = None
    if stat.S_ISSOCK(os.fstat(request_fd).st_mode):
        copy = os.dup(request_fd)  # its own descriptor, only ever polled and peeked at
        try:
            watched = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
    try:
        with os.fdopen(request_fd, "rb", buffering=65536) as stdin, \
                os.fdopen(response_fd, "wb", buffering=65536) as stdout:
            return serve(app, stdin, stdout, watched, on_busy)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the client left (the close's final flush can say so too)
    finally:
        if watched is not None:
            watched.close()
