"""The router under attack: header injection, one sandbox's client reaching another's, address
forms an SSRF would try, and a hostile sandbox answering the router.

Complements test_router_ssrf.py, test_router_failures.py and test_router_auth.py (which
tests/security_report.py counts as they are). The real `sandbox-router` process in front of
the fixtures of router_fixtures.py; the `raw` sandbox's listener counts connections, so a
request that went to the wrong sandbox shows there. Records through `hostile`.

Trust model proven here: the bearer token is one credential for the whole router, so its
holder may name any sandbox with X-Sandbox-ID; reaching sandbox B from a request for A needs a
different X-Sandbox-ID and nothing else (no path, Host, query or header trick does it).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from testbed.support import free_port, serve
from tests.http.router_fixtures import (
    TOKEN,
    Upstream,
    raw_request,
    router_argv,
    write_static,
)


@pytest.fixture(scope="module")
def env(router_stack):
    """The session's router in front of the test upstreams (tests/http/conftest.py); nothing
    in this module may reach the tripwire."""
    yield router_stack
    assert router_stack.tripwire.connections == 0, router_stack.tripwire.received


def head(env, *lines: str, path: str = "/inj", sandbox: str = "echo") -> bytes:
    """A raw request for `sandbox`, with extra raw header lines."""
    base = [f"GET {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {TOKEN}"]
    if sandbox:
        base += [f"X-Sandbox-ID: {sandbox}", f"X-Sandbox-Port: {env.upstream.port}"]
    return ("\r\n".join([*base, *lines, "Connection: close"]) + "\r\n\r\n").encode(
        "utf-8", "surrogateescape")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def upstream_saw_header(env, name: str) -> bool:
    return any(k.lower() == name.lower() for r in env.upstream.requests for k, _ in r["headers"])


INJECTIONS = {
    "CR inside X-Sandbox-ID": ("X-Sandbox-ID: echo\rX-Injected: 1",),
    "bare LF inside a header": ("X-Note: a\nX-Injected: 1",),
    "NUL in a header value": ("X-Note: a\x00X-Injected: 1",),
    "obs-fold continuing X-Sandbox-ID": ("X-Sandbox-ID: echo", " raw"),
    "space before the colon": ("X-Sandbox-ID : raw",),
    "header name with a slash": ("X-Sandbox/ID: raw",),
    "non-ASCII in X-Sandbox-ID": ("X-Sandbox-ID: \u00e9cho",),
    "a second X-Sandbox-ID in other case": ("x-sandbox-id: raw",),
    "a second X-Sandbox-Port": ("X-Sandbox-Port: 1",),
    "a second X-Sandbox-Namespace pair": ("X-Sandbox-Namespace: default",
                                          "X-SANDBOX-NAMESPACE: team"),
    "a second X-Sandbox-Timeout": ("X-Sandbox-Timeout: 1", "X-Sandbox-Timeout: 2"),
    "comma list in X-Sandbox-ID": ("X-Sandbox-ID: echo, raw",),
    "empty duplicate X-Sandbox-ID": ("X-Sandbox-ID: ",),
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_header_injection_is_refused_and_reaches_no_one(hostile, env, case):
    lines = INJECTIONS[case]
    # Cases that repeat X-Sandbox-ID add to the base headers; the rest replace nothing.
    raw_before = env.raw.connections
    with hostile("router", f"header injection: {case}"):
        answer = raw_request(env.router_port, head(env, *lines, path=f"/inj-{len(case)}"))
        assert 400 <= status_of(answer) < 500, answer[:200]
        assert not upstream_saw_header(env, "X-Injected")
        assert not any(p.startswith(f"/inj-{len(case)}") for p in env.upstream.paths())
        assert env.raw.connections == raw_before


def test_encoded_crlf_in_the_path_stays_in_the_path(hostile, env):
    path = "/enc%0d%0aX-Injected:%20yes%0d%0a%0d%0a"
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"X-Sandbox-ID: raw\r\nX-Sandbox-Port: {env.raw.port}\r\n"
               "Connection: close\r\n\r\n").encode()
    with hostile("router", "percent-encoded CR LF in the path"):
        raw_request(env.router_port, request)
        sent = next(r for r in reversed(env.raw.received) if path.encode() in r)
        assert sent.startswith(f"GET {path} HTTP/1.1\r\n".encode())
        assert b"\r\nX-Injected" not in sent


# ---- one sandbox's client reaching another's -----------------------------------------------

CROSS = {
    "dot-dot path": {"path": "/../raw/x"},
    "encoded dot-dot path": {"path": "/%2e%2e/raw/x"},
    "double slash naming the other": {"path": "//raw/x"},
    "Host header naming the other": {"Host": "raw"},
    "X-Forwarded-Host naming the other": {"X-Forwarded-Host": "raw"},
    "Forwarded header naming the other": {"Forwarded": "host=raw;for=127.0.0.1"},
    "query naming the other": {"path": "/x?X-Sandbox-ID=raw&X-Sandbox-Port=1"},
    "underscore header X_Sandbox_ID": {"X_Sandbox_ID": "raw"},
    "X-Original-URL naming the other": {"X-Original-URL": "/raw"},
    "X-Sandbox-Namespace blank": {"X-Sandbox-Namespace": ""},
}


@pytest.mark.parametrize("case", sorted(CROSS))
def test_a_request_for_one_sandbox_never_reaches_another(hostile, env, case):
    extra = dict(CROSS[case])
    path = extra.pop("path", f"/cross-{case.split()[0]}")
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "echo",
               "X-Sandbox-Port": str(env.upstream.port), **extra}
    raw_before, echo_before = env.raw.connections, len(env.upstream.requests)
    with hostile("router", f"cross-sandbox: {case}"):
        conn_answer = raw_request(env.router_port, (
            f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + ("" if "Host" in headers else "Host: x\r\n") + "Connection: close\r\n\r\n"
        ).encode())
        assert status_of(conn_answer) in (200, 400), conn_answer[:200]
        assert env.raw.connections == raw_before, "the other sandbox was contacted"
        if status_of(conn_answer) == 200:
            assert len(env.upstream.requests) == echo_before + 1
            assert env.upstream.paths()[-1] == path


def test_pipelined_requests_each_go_where_their_own_headers_say(hostile, env):
    one = (f"GET /pipe-a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
           f"X-Sandbox-ID: echo\r\nX-Sandbox-Port: {env.upstream.port}\r\n\r\n")
    two = (f"GET /pipe-b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
           "Connection: close\r\n\r\n")  # no routing headers: must not inherit the first's
    with hostile("router", "second pipelined request inherits nothing from the first"):
        answer = raw_request(env.router_port, (one + two).encode())
        assert answer.count(b"HTTP/1.1 200") == 1
        assert b"HTTP/1.1 400" in answer
        assert "/pipe-b" not in env.upstream.paths()


def test_the_token_is_the_whole_trust_boundary(hostile, env):
    """Documents the trust model: the same token reaches any declared sandbox by name, and
    only by name; without the token, nothing is reached."""
    with hostile("router", "no token: another sandbox is not reachable"):
        response = requests.get(f"{env.url}/t", timeout=10, headers={
            "X-Sandbox-ID": "echo", "X-Sandbox-Namespace": "team",
            "X-Sandbox-Port": str(env.upstream.port)})
        assert response.status_code == 401
    response = requests.get(f"{env.url}/t", timeout=10, headers={
        "Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "echo",
        "X-Sandbox-Namespace": "team", "X-Sandbox-Port": str(env.upstream.port)})
    assert response.status_code == 200  # by design: the token names any sandbox


# ---- address forms an SSRF would try --------------------------------------------------------

@pytest.mark.parametrize("name", ["0177.0.0.1", "0x7f.0.0.1", "127.1", "0x7f.1", "[::1]",
                                  "::ffff:7f00:1", "169.254.169.254", "0251.0376.0251.0376",
                                  "2852039166.nip.io", "127.0.0.1.nip.io"])
def test_ip_spellings_as_sandbox_or_namespace_are_400(hostile, env, name):
    for header in ("X-Sandbox-ID", "X-Sandbox-Namespace"):
        with hostile("router", f"{name} as {header}"):
            headers = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "echo",
                       "X-Sandbox-Port": str(env.upstream.port), header: name}
            response = requests.get(f"{env.url}/ip", headers=headers, timeout=10)
            assert response.status_code == 400
            assert header in response.json()["error"]
    assert env.tripwire.connections == 0


# Non-canonical spellings stop the router at start. (Canonical but forbidden addresses, such
# as 169.254.169.254 or ::ffff:127.0.0.1, load and are refused per request: test_router_ssrf.)
@pytest.mark.parametrize("address", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1",
                                     "017700000001", "0x7f000001", "[::1]", "localhost",
                                     "169.254.169.254.nip.io", "127.0.0.1:8888"])
def test_a_static_file_with_such_an_address_stops_the_router_at_start(hostile, tmp_path,
                                                                        address):
    static = write_static(tmp_path / "s.yaml", {"bait": {"addresses": [address],
                                                         "ports": [8888]}},
                          allow_loopback=True)
    port = free_port()
    with hostile("router", f"static sandbox address {address}"):
        result = subprocess.run(router_argv(port, "--static-file", str(static)), timeout=20,
                                capture_output=True, text=True,
                                env={"SANDBOX_ROUTER_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
        assert result.returncode != 0
        assert address.strip("[]") in result.stderr or "address" in result.stderr.lower()


# ---- a hostile sandbox answering the router -----------------------------------------------

class HostileUpstream:
    """Raw sandbox that answers by path with responses meant to confuse a proxy."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buffer += got
                request, buffer = buffer.split(b"\r\n\r\n", 1)
                path = request.split(b" ", 2)[1]
                conn.sendall(self.answer(path))

    @staticmethod
    def answer(path: bytes) -> bytes:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
        if path == b"/double":  # two answers to one request: the second waits to poison
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
        if path == b"/huge-header":
            return b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n"
        if path == b"/cl-and-te":
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
        if path == b"/cr-header":
            return b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok"
        if path == b"/many-continues":
            return b"HTTP/1.1 100 Continue\r\n\r\n" * 2000 + ok
        return ok


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    upstream = HostileUpstream()
    static = write_static(tmp_path_factory.mktemp("hostile-up") / "s.yaml",
                          {"evil": {"addresses": ["127.0.0.1"], "ports": [upstream.port]}},
                          allow_loopback=True)
    from tests.http.router_fixtures import start_router

    with start_router(static, env={"SANDBOX_ROUTER_DEFAULT_TIMEOUT": "3"}) as url:
        yield url, upstream
    upstream.close()


def evil(url: str, upstream: HostileUpstream, path: str,
         session: requests.Session | None = None) -> requests.Response:
    return (session or requests).get(f"{url}{path}", timeout=15, headers={
        "Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "evil",
        "X-Sandbox-Port": str(upstream.port)})


@pytest.mark.parametrize("path", ["/double", "/cl-and-te"])
def test_a_sandbox_cannot_queue_an_answer_for_the_next_request(hostile, hostile_env, path):
    url, upstream = hostile_env
    session = requests.Session()
    with hostile("router", f"hostile sandbox answers twice ({path})"):
        with contextlib.suppress(requests.RequestException):
            evil(url, upstream, path, session)
        follow = [evil(url, upstream, "/next", session) for _ in range(3)]
        assert all(r.status_code == 200 and r.content == b"real" for r in follow), \
            [r.content for r in follow]


@pytest.mark.parametrize("path", ["/huge-header", "/cr-header", "/many-continues"])
def test_malformed_sandbox_answers_are_contained(hostile, hostile_env, path):
    url, upstream = hostile_env
    with hostile("router", f"hostile sandbox answer {path}"):
        try:
            response = evil(url, upstream, path)
        except requests.ConnectionError:
            response = None  # the router cut the connection: acceptable, nothing forged
        if response is not None:
            assert response.status_code in (200, 502)
            assert "evil" not in response.headers.get("Set-Cookie", "")
            assert len(response.headers.get("X-Big", "")) < 200_000 or \
                response.status_code == 502
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert evil(url, upstream, "/next").content == b"real"


# ---- many, idle and slow client connections (finding 25) -----------------------------------

def limited(argv: list[str], nofile: int) -> list[str]:
    """`argv` run with at most `nofile` open descriptors (soft and hard), as in a container
    with a low limit: the router cannot raise it."""
    set_limit = ("import os, resource, sys; "
                 f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                 "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", set_limit, *argv]


@contextlib.contextmanager
def own_router(upstream: Upstream, tmp_path, *, nofile: int | None = None,
               settings: dict[str, str] | None = None):
    """A router of its own in front of `upstream` (as sandbox `echo`); yields its port."""
    static = write_static(tmp_path / "s.yaml", {"echo": {"addresses": ["127.0.0.1"],
                                                         "ports": [upstream.port]}},
                          allow_loopback=True)
    port = free_port()
    argv = router_argv(port, "--static-file", str(static))
    env = {"SANDBOX_ROUTER_TOKEN": TOKEN, "SANDBOX_ROUTER_ACCESS_LOG": "false",
           "SANDBOX_ROUTER_DEFAULT_PORT": str(upstream.port), **(settings or {})}
    with serve(limited(argv, nofile) if nofile else argv, port, env=env):
        yield port


def echo(port: int, path: str = "/real", timeout: float = 10) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=timeout, headers={
        "Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "echo"})


def hold(port: int, count: int) -> list[socket.socket]:
    """`count` connections to the router: every other one idle, the rest half a head."""
    held = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if index % 2:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Sandbox-ID: ec")
        held.append(sock)
    return held


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Whether the router closes `sock` within `wait` seconds (what it still sends, such as
    the rest of an answer, is read and dropped)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_held_connections_cannot_stall_real_clients(hostile, tmp_path):
    """1,500 idle and half-header connections against a router whose descriptor limit is
    1,024. Before: accept() failed with EMFILE, so a real request waited in the backlog
    until the held connections timed out (75 s; the probe's 20 s request timed out) while
    asyncio logged every failed accept (84 MB in 25 s). Now the longest-idle connection makes
    room for each new one: the real request is answered at once."""
    with Upstream() as upstream, own_router(upstream, tmp_path, nofile=1024) as port, \
            hostile("router", "1500 idle and half-header connections, 1024 descriptors"):
        held = hold(port, 1500)
        try:
            answer = echo(port)
            assert answer.status_code == 200 and answer.json()["raw_path"] == "/real"
            assert requests.get(f"http://127.0.0.1:{port}/healthz",
                                timeout=10).status_code == 200
            # The oldest held connections were closed to make room, not the new ones.
            assert closed_by_peer(held[0], 5) and closed_by_peer(held[1], 5)
        finally:
            for sock in held:
                sock.close()


def test_idle_and_slow_header_connections_are_closed_within_the_idle_timeout(hostile,
                                                                              tmp_path):
    """A connection that sends nothing, one that trickles a head a byte at a time, and a
    keep-alive connection after its answer are each closed client_idle_timeout after they
    opened (or answered). Before: aiohttp kept each for 75 s."""
    settings = {"SANDBOX_ROUTER_CLIENT_IDLE_TIMEOUT": "2"}
    with Upstream() as upstream, own_router(upstream, tmp_path, settings=settings) as port, \
            hostile("router", "idle, trickled-head and idle keep-alive connections"):
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(f"GET /k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "X-Sandbox-ID: echo\r\n\r\n".encode())
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened = time.monotonic()
        head, cut = b"GET /t HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 100, None
        for byte in head:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                cut = time.monotonic() - opened
                break
            if closed_by_peer(trickle, 0.25):
                cut = time.monotonic() - opened
                break
        assert cut is not None and cut < 10, "a trickled head kept its connection"
        assert closed_by_peer(idle, 1) and closed_by_peer(kept, 1)
        assert echo(port).status_code == 200
        for sock in (idle, kept, trickle):
            sock.close()


def test_at_the_bound_a_busy_connection_is_kept_and_the_new_one_gets_a_503(hostile,
                                                                          tmp_path):
    """With every connection serving a request, a new one is refused with the router's
    JSON 503 (marked not forwarded) and the requests in flight finish. Before: no bound."""
    settings = {"SANDBOX_ROUTER_MAX_CLIENT_CONNECTIONS": "4"}
    with Upstream() as upstream, own_router(upstream, tmp_path, settings=settings) as port, \
            hostile("router", "a connection past the bound while all are busy"):
        results: list[int] = []
        busy = [threading.Thread(target=lambda: results.append(
            echo(port, "/__sleep?s=3", timeout=20).status_code)) for _ in range(4)]
        for thread in busy:
            thread.start()
        deadline = time.monotonic() + 10
        while len(upstream.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(upstream.requests) == 4  # all four are being served
        refused = raw_request(port, f"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                    f"{TOKEN}\r\nX-Sandbox-ID: echo\r\n\r\n".encode())
        for thread in busy:
            thread.join(20)
        assert results == [200] * 4
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert b"X-Sandbox-Not-Forwarded: true" in refused
        assert b'"error"' in refused
        assert echo(port).status_code == 200


# ---- callers that stall: a body that stops, an answer nobody reads (finding 26) ------------

@pytest.mark.parametrize(("declared", "sent"), [(1000, 10), (10_000_000, 100_000)],
                         ids=["buffered body", "streamed body"])
def test_a_body_that_stops_arriving_gets_a_408_within_the_timeout(hostile, tmp_path,
                                                                   declared, sent):
    """Before: the router waited for the rest of the body for as long as the caller kept the
    connection (a connection the bound above must never close: it is serving a request)."""
    settings = {"SANDBOX_ROUTER_DEFAULT_TIMEOUT": "2"}
    with Upstream() as upstream, own_router(upstream, tmp_path, settings=settings) as port, \
            hostile("router", f"a {declared}-byte body that stops after {sent} bytes"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                         f"\r\nX-Sandbox-ID: echo\r\nContent-Length: {declared}\r\n\r\n"
                         .encode() + b"b" * sent)
            sock.settimeout(15)
            answer = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in answer and (got := sock.recv(65536)):
                    answer += got
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert echo(port).status_code == 200


def test_a_caller_that_reads_nothing_is_cut_after_the_timeout(hostile, tmp_path):
    """A 64 MiB answer the caller does not read. Before: the router waited to write for as
    long as the caller kept the connection, holding it and the sandbox's connection (and
    the streaming resumed whenever the caller read again, however late). Now a write that
    waits the request's timeout ends the connection: what the caller reads later stops
    short, within buffers."""
    size = 64 * 1024 * 1024
    settings = {"SANDBOX_ROUTER_DEFAULT_TIMEOUT": "2"}
    with Upstream() as upstream, own_router(upstream, tmp_path, settings=settings) as port, \
            hostile("router", "a caller that never reads a 64 MiB answer"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(f"GET /__big?size={size} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"Bearer {TOKEN}\r\nX-Sandbox-ID: echo\r\n\r\n".encode())
            time.sleep(8)  # the router's 2 s bound passes while nothing is read
            received, sock_open = 0, True
            sock.settimeout(10)
            with contextlib.suppress(OSError):
                while got := sock.recv(1 << 20):
                    received += len(got)
                sock_open = False
        assert received < size / 2, f"{received} bytes: the router kept streaming"
        assert not sock_open or received < size
        assert echo(port).status_code == 200
