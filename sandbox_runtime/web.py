"""The runtime's HTTP layer: request and response objects, the route lookup, errors as JSON,
and the WSGI adapter that serves one route table over any transport.

Called by app.py, which builds a `Router` from routes.py's table and serves it as a
`WSGIApp`: gunicorn calls that over TCP, stdio.py over the local backend's socketpair. Route
handlers see only `Request` and return a `Response`; they know no transport. Every error a
handler raises (errors.HTTPError), every unknown path or method, and every unexpected
exception becomes `{"error": ...}` here, in `error_answer`, and nowhere else.

It must not import Flask, werkzeug or prometheus_client: the `--stdio` server imports it
at start-up, where each of those costs a tenth of a second or more under gVisor's ptrace
platform.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from sandbox_runtime.errors import (
    BadRequest,
    BodyUnreadable,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    status_line,
)

log = logging.getLogger("sandbox_runtime")

JSON = "application/json"
# environ key: stdio.py's client connection (stdin as a socket), watched for a hang-up while
# a command runs, as gunicorn's `gunicorn.socket` is.
CLIENT_SOCKET = "sandbox_runtime.client_socket"
READ_SIZE = 65536
INTERNAL_ERROR = b'{"error": "internal error"}'

StartResponse = Callable[..., Any]


def _no_lone_surrogates(body: dict[str, Any]) -> None:
    """A \\uD800-style escape with no partner decodes to a string no path, command or
    environment can hold (encoding it for the system fails deep inside a route: a 500).
    Refused here, whatever field it is in."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("body: a string holds an unpaired UTF-16 surrogate escape") from None


class Request:
    """What a handler may read of a request: method, path (decoded), headers it needs, body."""

    __slots__ = ("environ", "method", "path", "tail")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method: str = environ["REQUEST_METHOD"]
        raw = environ.get("PATH_INFO", "")
        # WSGI carries the path's bytes as latin-1 text; paths are UTF-8 (bad bytes: U+FFFD).
        self.path: str = raw if raw.isascii() else raw.encode("latin-1").decode("utf-8",
                                                                              "replace")
        self.tail = ""  # for a route ending in "*": the rest of the path after its prefix

    @property
    def content_type(self) -> str:
        return str(self.environ.get("CONTENT_TYPE", ""))

    @property
    def content_length(self) -> int | None:
        raw = self.environ.get("CONTENT_LENGTH")
        try:
            return int(raw) if raw else None
        except ValueError:
            raise BadRequest("Content-Length: not a number") from None

    def reader(self) -> Callable[[int], bytes]:
        """read(n) of the body, which never reads past its end. A body the server cannot
        read (its framing broken or cut short: gunicorn raises its own errors) is
        BodyUnreadable, a 400, not the 500 of an unexpected exception."""
        stream = self.environ["wsgi.input"]
        terminated = bool(self.environ.get("wsgi.input_terminated"))
        left = [self.content_length or 0]  # WSGI: no length, no terminated stream: no body

        def read(size: int) -> bytes:
            if not terminated and left[0] <= 0:
                return b""
            try:
                data = stream.read(size if terminated else min(size, left[0]))
            except HTTPError:
                raise
            except Exception:
                raise BodyUnreadable("body: could not be read to its end") from None
            left[0] -= len(data)
            return data  # type: ignore[no-any-return]

        return read

    def json(self, limit: int) -> dict[str, Any]:
        """The body as a JSON object of at most `limit` bytes."""
        length = self.content_length
        if length is not None and length > limit:
            raise RequestEntityTooLarge(f"body: larger than {limit} bytes")
        read, parts, size = self.reader(), [], 0
        while length is None or size < length:
            # A known length is read in one call; RawIOBase.read(n) allocates n bytes.
            part = read(min(READ_SIZE if length is None else length - size, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > limit:
                raise RequestEntityTooLarge(f"body: larger than {limit} bytes")
        raw = b"".join(parts)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # too deep is bad input too
            raise BadRequest("body: expected a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("body: expected a JSON object")
        if b"\\u" in raw:
            _no_lone_surrogates(body)
        return body

    @property
    def client(self) -> Any:
        """The client's connection, to notice a hang-up while a command runs: gunicorn's
        socket (as an fd), stdio's stdin socket object, or None."""
        stdin_socket = self.environ.get(CLIENT_SOCKET)
        if stdin_socket is not None:
            return stdin_socket
        sock = self.environ.get("gunicorn.socket")
        try:
            return sock.fileno() if sock is not None else None
        except OSError:
            return None


class Response:
    """An answer: status, headers, and the body as bytes (framed by Content-Length) or as an
    iterable of bytes (a stream, sent as it is produced; an empty chunk asks the server to
    send what it holds, the head included). `on_close` runs once the answer is out."""

    __slots__ = ("body", "headers", "on_close", "status")

    def __init__(self, body: bytes | Iterable[bytes], status: int = 200,
                 content_type: str = JSON, headers: Iterable[tuple[str, str]] = (),
                 on_close: Callable[[], None] | None = None) -> None:
        self.status = status
        self.headers = [("Content-Type", content_type), *headers]
        if isinstance(body, bytes):
            self.headers.append(("Content-Length", str(len(body))))
            body = [body]
        self.body = body
        self.on_close = on_close


def json_answer(value: object, status: int = 200, **kwargs: Any) -> Response:
    return Response(json.dumps(value).encode(), status, **kwargs)


def error_answer(exc: HTTPError) -> Response:
    """The one mapping of an error to its answer."""
    headers = [("Allow", ", ".join(exc.allowed))] if isinstance(exc, MethodNotAllowed) else []
    if isinstance(exc, BodyUnreadable):
        headers.append(("Connection", "close"))
    return json_answer({"error": exc.description}, exc.code, headers=headers)


def file_answer(request: Request, file: IO[bytes], size: int, chunk: int,
                headers: Iterable[tuple[str, str]]) -> Response:
    """An open file's first `size` bytes; the server's file wrapper when it has one
    (gunicorn sends it with sendfile)."""
    wrapper = request.environ.get("wsgi.file_wrapper")
    body = wrapper(file, chunk) if wrapper is not None else _chunks(file, chunk)
    return Response(body, content_type="application/octet-stream",
                    headers=[("Content-Length", str(size)), *headers])


def _chunks(file: IO[bytes], size: int) -> Iterator[bytes]:
    try:
        while data := file.read(size):
            yield data
    finally:
        file.close()


Handler = Callable[[Request], Response]


class Router:
    """Route lookup: (method, path) -> handler. A path ending in "*" matches every path that
    starts with what precedes it; the rest is `request.tail`. HEAD is served as GET."""

    def __init__(self, routes: Iterable[tuple[str, str, Handler]]) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.prefixes: dict[str, dict[str, Handler]] = {}
        for method, path, handler in routes:
            table = (self.prefixes, path[:-1]) if path.endswith("*") else (self.exact, path)
            table[0].setdefault(table[1], {})[method] = handler

    def find(self, request: Request) -> Handler:
        path = request.path
        methods = self.exact.get(path)
        if methods is None:
            for prefix, candidates in self.prefixes.items():
                if path.startswith(prefix):
                    methods, request.tail = candidates, path[len(prefix):]
                    break
            else:
                raise NotFound(f"no such route: {path[:200]!r}")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            raise MethodNotAllowed(f"{request.method[:20]} is not allowed here; allowed: "
                                   f"{', '.join(allowed)}", allowed)
        return handler


class WSGIApp:
    """`router` served as a WSGI application; `count_error(status)` hears of every error
    answer (the metrics)."""

    def __init__(self, router: Router, count_error: Callable[[int], None]) -> None:
        self.router = router
        self.count_error = count_error

    def answer(self, request: Request) -> Response:
        """The handler's answer, or the error's."""
        try:
            return self.router.find(request)(request)
        except HTTPError as exc:
            self.count_error(exc.code)
            return error_answer(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path[:200])
            self.count_error(500)
            return Response(INTERNAL_ERROR, 500)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        response = self.answer(Request(environ))
        start_response(status_line(response.status), response.headers)
        if response.on_close is None:
            return response.body
        return _Closing(response.body, response.on_close)


class _Closing:
    """A body with something to run when the server closes it (PEP 3333 `close()`)."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self.body = body
        self.on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()
