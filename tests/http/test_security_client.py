"""The client facing a hostile sandbox: answers too large, endless or trickled must not fill
the host's memory or hold a call past its timeout.

A raw TCP server on loopback plays the sandbox (or a router forwarding one), answering every
request with the bytes a test gives it; both clients (SandboxClient, AsyncSandboxClient)
reach it over the router's httpx transports, as the Kubernetes backend does. MAX_ANSWER is
lowered to 1 MiB so that "too large" costs a few MiB here; every answer below is one the
client accepted, whole, before it was bounded.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agentic_sandbox import (
    SandboxConnectionError,
    SandboxRequestError,
    SandboxTimeoutError,
    _protocol,
)
from testbed.support import free_port
from tests.client_behaviour import Driver, close_driver, open_driver
from tests.http.test_client_behaviour_tcp import DirectRuntime

CAP = 1024 * 1024
RESULT = {"stdout": "", "stderr": "", "exit_code": 0, "timed_out": False}
Answer = Callable[[socket.socket], None]  # writes one answer on the connection


class HostileSandbox:
    """Answers every request with `answer(conn)`; the answer in use can be swapped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answer: Answer = lambda conn: None
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            conn, _ = self._sock.accept()
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        """Read the whole request, answer, and let the client close first (closing with
        unread bytes would reset the connection under the client's last reads)."""
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            data = b""
            while (end := data.find(b"\r\n\r\n")) < 0 or len(data) < end + 4 + length(data):
                got = conn.recv(65536)
                if not got:
                    return
                data += got
            self.answer(conn)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._sock.close()


def length(request: bytes) -> int:
    """The Content-Length of a request (0 without one; our clients send no chunked body)."""
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[HostileSandbox]:
    server = HostileSandbox()
    yield server
    server.close()


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, sandbox_server: HostileSandbox,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    monkeypatch.setattr(_protocol, "MAX_ANSWER", CAP, raising=False)
    driver = open_driver(request.param, lambda cls: cls(
        "tpl", backend=DirectRuntime(f"http://127.0.0.1:{sandbox_server.port}"),
        run_timeout=5, request_timeout=1.5))
    yield driver
    close_driver(driver)


def padded(answer: dict, padding: int) -> bytes:
    """A valid JSON answer after `padding` bytes of whitespace."""
    return b" " * padding + json.dumps(answer).encode()


def with_length(body: bytes, status: str = "200 OK") -> Answer:
    def send(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        conn.sendall(body)
    return send


def chunked(pieces: Iterator[bytes]) -> Answer:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for piece in pieces:
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")
    return send


def whitespace_then(answer: dict, total: int, piece: int = 65536) -> Iterator[bytes]:
    for _ in range(total // piece):
        yield b" " * piece
    yield json.dumps(answer).encode()


def trickled(answer: dict, seconds: float) -> Iterator[bytes]:
    """One space every 50 ms for `seconds`, then the answer (a read timeout never trips)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield b" "
        time.sleep(0.05)
    yield json.dumps(answer).encode()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_answer_is_refused_not_held(hostile, client, sandbox_server, framing):
    sandbox_server.answer = (with_length(padded(RESULT, 4 * CAP)) if framing == "content-length"
                             else chunked(whitespace_then(RESULT, 4 * CAP)))
    with hostile("client", f"run() answered with 4x the answer cap ({framing}, {client.kind})"), \
            pytest.raises(SandboxConnectionError, match="larger than"):
        client.run("true")


def test_a_trickled_answer_ends_at_the_call_s_timeout(hostile, client, sandbox_server):
    sandbox_server.answer = chunked(trickled({"exists": True}, seconds=8))
    with hostile("client", f"exists() answered one byte per 50 ms ({client.kind})"):
        start = time.monotonic()
        with pytest.raises(SandboxTimeoutError):
            client.exists("f")
        assert time.monotonic() - start < 6  # its timeout is 1.5 s; the answer took 8


def test_an_oversized_error_body_is_cut_to_its_bound(hostile, client, sandbox_server):
    sandbox_server.answer = with_length(b'{"error": "' + b"e" * (4 * CAP) + b'"}',
                                        status="500 Internal Server Error")
    with hostile("client", f"an error answer of 4 MiB ({client.kind})"):
        with pytest.raises(SandboxRequestError) as caught:
            client.list(".")
        assert len(caught.value.body) <= _protocol.MAX_ERROR_BODY


def test_an_oversized_stream_line_is_refused(hostile, client, sandbox_server):
    line = json.dumps({"stream": "stdout", "data": "x" * (2 * CAP)}).encode() + b"\n"
    final = json.dumps({"exit_code": 0, "timed_out": False}).encode() + b"\n"
    sandbox_server.answer = chunked(iter([line[i:i + 65536] for i in range(0, len(line), 65536)]
                                         + [final]))
    with hostile("client", f"stream() sent a 2 MiB output line ({client.kind})"), \
            pytest.raises(SandboxConnectionError, match="larger than"):
        client.stream_all("true")


# A sandbox answering with the right status and JSON of the wrong shape (finding 27). Before,
# some surfaced as bare ValueError/TypeError/KeyError/OverflowError, and some were coerced
# into plausible lies (timed_out "no" read as True, exit code 1.5 as 1, "exists": "yes").
RUN = {"stdout": "", "stderr": "", "exit_code": 0, "timed_out": False}
WRONG_SHAPES = {
    "exit code a string": ("run", RUN | {"exit_code": "x"}),
    "exit code a float": ("run", RUN | {"exit_code": 1.5}),
    "exit code a list": ("run", RUN | {"exit_code": [1]}),
    "exit code a bool": ("run", RUN | {"exit_code": True}),
    "exit code infinite": ("run", b'{"stdout": "", "exit_code": 1e400}'),
    "exit code NaN": ("run", b'{"stdout": "", "exit_code": NaN}'),
    "stdout a number": ("run", RUN | {"stdout": 5}),
    "timed_out a string": ("run", RUN | {"timed_out": "no"}),
    "signal a number": ("run", RUN | {"exit_code": -9, "signal": 9}),
    "list entry without size": ("list", [{"name": "a", "type": "file"}]),
    "list entry not an object": ("list", [["a", "file", 1]]),
    "exists a string": ("exists", {"exists": "yes"}),
    "exists missing": ("exists", {"found": True}),
    "stat size a string": ("stat", {"path": "f", "type": "file", "size": "1", "mode": 420,
                                    "mtime": 0}),
}


@pytest.mark.parametrize("case", list(WRONG_SHAPES))
def test_a_wrongly_shaped_answer_is_the_sdk_s_error(hostile, client, sandbox_server, case):
    call, answer = WRONG_SHAPES[case]
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    sandbox_server.answer = with_length(body)
    with hostile("client", f"{call}() answered {case} ({client.kind})"), \
            pytest.raises(SandboxConnectionError, match="unexpected answer"):
        getattr(client, call)("true" if call == "run" else "f")


def test_a_wrongly_shaped_stream_event_is_the_sdk_s_error(hostile, client, sandbox_server):
    lines = [json.dumps({"stream": "stdout", "data": 5}).encode() + b"\n",
             json.dumps({"exit_code": "0"}).encode() + b"\n"]
    for line in lines:
        sandbox_server.answer = chunked(iter([line]))
        with hostile("client", f"stream() sent {line[:40]!r} ({client.kind})"), \
                pytest.raises(SandboxConnectionError, match="malformed stream line"):
            client.stream_all("true")


@pytest.mark.parametrize("status", ["307 Temporary Redirect", "302 Found"])
def test_a_redirect_is_an_error_and_is_never_followed(hostile, client, sandbox_server,
                                                      status):
    """A sandbox, or a gateway in front of the router, answering a redirect to another host
    (finding 31). Redirects were never followed (the other host saw nothing), but a 3xx
    counted as success: read() returned the redirect's body (an empty file, or a login
    page) as the file's content. Now any status outside 2xx is the SDK's error."""
    with socket.create_server(("127.0.0.1", 0)) as elsewhere:
        elsewhere.settimeout(0.2)
        location = f"http://127.0.0.1:{elsewhere.getsockname()[1]}/steal"
        page = b"<html>log in</html>"
        sandbox_server.answer = lambda conn: conn.sendall(
            f"HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(page)}\r\nConnection: close\r\n\r\n".encode() + page)
        with hostile("client", f"read() and run() answered {status} ({client.kind})"):
            for call in (lambda: client.read("f"), lambda: client.run("true")):
                with pytest.raises(SandboxRequestError) as caught:
                    call()
                assert caught.value.status_code == int(status.split()[0])
            with pytest.raises(TimeoutError):
                elsewhere.accept()  # nobody came: the token never travelled
