"""Both gunicorn servers (hooks and runtime) over TCP: idle and slow clients starve nothing,
and every answer gunicorn writes itself is the documented JSON error.

The servers run exactly as deployed (sandbox_common.serving.HeadFirstWorker from their
gunicorn_conf), the hook server with its smallest honest set-up (one worker, four threads).
64 connections that send nothing plus 64 stalled inside their headers are held open while
/healthz is probed on fresh connections (as a kubelet does) and hooks are POSTed on a
kept-alive connection (as Metacontroller does).
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from testbed.hookrequests import sandbox, sync_request
from testbed.slowclients import (
    HALF_BODIES,
    fresh_get,
    held_bodies,
    held_connections,
    latencies,
    percentile,
)

# The goal is p99 <= 100 ms, and `make bench` reports the figure against it. The test asserts
# 250 ms: on this 2-core machine shared with other test runs (load average 5-8), 20 runs of
# 200 probes each measured p99 from 3.6 to 94 ms and single probes up to 187 ms, all of it
# waiting for a CPU, not for the server (p50 stayed 0.9-1.6 ms). A server that hands a
# thread to a slow client fails by seconds: plain gthread stalled 4.5 s per idle connection
# and indefinitely behind half-sent heads.
P99_BOUND_S = 0.25
PROBES = 200


@pytest.fixture
def hooks_port(hooks_server) -> int:
    return hooks_server.port


@pytest.fixture
def runtime_port(runtime) -> int:
    return int(runtime.url.rsplit(":", 1)[1])


@pytest.fixture(params=["hooks", "runtime"])
def server(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(surface name, port) of each server in turn."""
    return request.param, int(request.getfixturevalue(f"{request.param}_port"))


def test_healthz_answers_fast_while_idle_and_half_header_clients_are_held(hostile, server):
    name, port = server
    fresh_get(port)  # warm
    with hostile(name, "64 idle + 64 half-header connections held: /healthz p99"):
        with held_connections(port, idle=64, half=64):
            samples = latencies(lambda: fresh_get(port), PROBES)
        assert percentile(samples, 0.99) <= P99_BOUND_S, sorted(samples)[-5:]


def test_hook_posts_are_not_delayed_by_held_clients(hostile, hooks_port):
    body = json.dumps(sync_request(sandbox("web"))).encode()
    conn = http.client.HTTPConnection("127.0.0.1", hooks_port, timeout=30)

    def post() -> float:
        start = time.perf_counter()
        conn.request("POST", "/sync/sandbox", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return time.perf_counter() - start

    post()
    with hostile("hooks", "64 idle + 64 half-header connections held: sync POST p99"):
        with held_connections(hooks_port, idle=64, half=64):
            samples = latencies(post, PROBES)
        conn.close()
        assert percentile(samples, 0.99) <= P99_BOUND_S, sorted(samples)[-5:]


def test_many_more_stalled_heads_than_threads_starve_nothing(hostile, server):
    name, port = server
    # Each held connection costs no thread: far more of them than threads changes nothing.
    with hostile(name, "200 half-header connections held"), \
            held_connections(port, idle=0, half=200):
        assert fresh_get(port) < 5


BODY_PATHS = {"hooks": "/sync/sandbox", "runtime": "/execute"}  # routes that read a body


def test_clients_stalled_inside_their_bodies_starve_nothing(hostile, server):
    name, port = server
    # 16 of each kind (96 in all): more than the threads of either server (hooks 4, the
    # runtime 2 workers x 20). Before bodies were read by the main loop, four of them took
    # the hook server's threads until they left, and /healthz waited as long.
    with hostile(name, f"16 x {len(HALF_BODIES)} kinds of request stalled in their body "
                       "held: /healthz p99"):
        with held_bodies(port, each=16, path=BODY_PATHS[name]):
            samples = latencies(lambda: fresh_get(port, timeout=5), PROBES // 4)
        assert percentile(samples, 0.99) <= P99_BOUND_S, sorted(samples)[-5:]


def test_hook_posts_are_not_delayed_by_stalled_bodies(hostile, hooks_port):
    body = json.dumps(sync_request(sandbox("web"))).encode()
    with hostile("hooks", "request bodies stalled: a sync POST answers"), \
            held_bodies(hooks_port, each=4):
        conn = http.client.HTTPConnection("127.0.0.1", hooks_port, timeout=5)
        try:
            conn.request("POST", "/sync/sandbox", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200, response.read()[:300]
            assert json.loads(response.read())["children"]
        finally:
            conn.close()


def test_expect_100_continue_gets_one_interim_answer_then_the_answer(server):
    name, port = server
    body = b'{"command": "true"}' if name == "runtime" else b"{}"
    path = b"/execute" if name == "runtime" else b"/sync/sandbox"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n" % (path, len(body)))
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert b"100 Continue" not in answer
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:300]


def test_a_body_sent_in_many_small_pieces_arrives_whole(server):
    """The main loop gathers a body a few bytes at a time and hands it over whole, chunked
    or not; a keep-alive connection serves the next request after it."""
    name, port = server
    if name == "runtime":
        path, payload = b"/execute", json.dumps({"command": "echo " + "x" * 3000}).encode()
    else:
        path, payload = b"/sync/sandbox", json.dumps(sync_request(sandbox("web"))).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 7]), payload[i:i + 7])
                       for i in range(0, len(payload), 7)) + b"0\r\nX-Trailer: t\r\n\r\n"
    framings = [(b"Content-Length: %d" % len(payload), payload),
                (b"Transfer-Encoding: chunked", chunked)]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for header, data in framings:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\n%s\r\n\r\n" % (path, header))
            for i in range(0, len(data), 997):
                sock.sendall(data[i:i + 997])
                time.sleep(0.002)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 3, answer[:600]
    if name == "runtime":
        assert answer.count(b"x" * 3000) == 2


def test_a_client_half_closing_inside_its_body_gets_a_400(server):
    name, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {BODY_PATHS[name]} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     "application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]


def chunked(data: bytes, size: int = 65536) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                    for i in range(0, len(data), size))


BROKEN_CHUNKS = {"a chunk size not in hex": b"zz\r\n",
                 "chunk data longer than its size": b"3\r\nabcdef\r\n0\r\n\r\n"}


@pytest.mark.parametrize("where", ["first bytes", "after 1.5 MiB"])
@pytest.mark.parametrize("breakage", sorted(BROKEN_CHUNKS))
def test_a_broken_chunked_body_is_a_400_that_ends_the_connection(hostile, server, breakage,
                                                                    where, tmp_path):
    """Read by the main loop (its first bytes) or by the app in a thread (past 1 MiB), a
    chunked body whose framing breaks is a JSON 400, not the 500 of a crash; the connection
    closes (a request pipelined behind it is not read) and an upload leaves nothing."""
    name, port = server
    if name == "runtime":
        path, ctype = "/upload", "multipart/form-data; boundary=bb"
        before = (b'--bb\r\nContent-Disposition: form-data; name="file"; '
                  b'filename="broken"\r\n\r\n')
    else:
        path, ctype, before = "/sync/sandbox", "application/json", b'{"parent": '
    filler = b"x" * (1024 * 1024 + 512 * 1024) if where == "after 1.5 MiB" else b""
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(before + filler) \
        + BROKEN_CHUNKS[breakage] + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with hostile(name, f"chunked body broken in its {where}: {breakage}"):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.count(b"HTTP/1.1 ") == 1, answer[:600]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:300]
        assert list(json.loads(body)) == ["error"]
        if name == "runtime":
            exists = json.loads(raw(port, b"GET /exists/broken HTTP/1.1\r\nHost: x\r\n"
                                          b"Connection: close\r\n\r\n")[2])
            assert exists["exists"] is False


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


GUNICORN_ERRORS = {
    "request line too long": (414, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    "malformed request line": (400, b"GARBAGE\r\nHost: x\r\n\r\n"),
    "bad HTTP version": (400, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
    "header field too large": (431, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
                               + b"b" * 20000 + b"\r\n\r\n"),
    "too many header fields": (431, b"GET / HTTP/1.1\r\n"
                               + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n"),
    "unsupported transfer coding": (501, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: foo, chunked\r\n\r\n"),
    "invalid header name": (400, b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"),
}


@pytest.mark.parametrize("case", sorted(GUNICORN_ERRORS))
def test_gunicorn_own_errors_are_json(hostile, server, case):
    name, port = server
    status, request = GUNICORN_ERRORS[case]
    with hostile(name, f"gunicorn's own error answer is JSON: {case}"):
        got, headers, body = raw(port, request)
        assert got == status, body[:300]
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert list(answer) == ["error"] and isinstance(answer["error"], str)
        assert answer["error"]
