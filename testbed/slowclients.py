"""Idle and half-header connections held against a server, and /healthz latency meanwhile.

Used by tests/http/test_serving.py (asserts a bound) and bench/bench_hooks.py,
bench/bench_runtime.py (report the figures). An idle connection connected and sent
nothing; a half-header one sent a request line and one header, then stalled (slowloris);
a half-body one sent a whole head and part of its body (or none of it), then stalled.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

HALF_HEADER = b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
# Requests stalled inside their bodies, each framed its own way.
HALF_BODIES = {
    "length, no body": b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    "length, part of the body": b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Type: application/json\r\n"
                                b"Content-Length: 1000\r\n\r\n{\"a\": ",
    "chunked, one chunk": b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    "chunked, inside a chunk size": b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n1",
    "expect 100-continue": b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
    "after a complete pipelined request": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                          b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 1000\r\n\r\n",
}


@contextlib.contextmanager
def held_connections(port: int, idle: int = 64, half: int = 64,
                     host: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """`idle` silent connections and `half` connections stalled inside their headers."""
    held: list[socket.socket] = []
    try:
        for i in range(idle + half):
            sock = socket.create_connection((host, port), timeout=10)
            if i >= idle:
                sock.sendall(HALF_HEADER)
            held.append(sock)
        time.sleep(0.3)  # the server has seen every connection and every first byte
        yield held
    finally:
        for sock in held:
            sock.close()


@contextlib.contextmanager
def held_bodies(port: int, each: int, path: str = "/sync/sandbox",
                host: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """`each` connections of every kind in HALF_BODIES, stalled inside their bodies (POSTs
    to `path`: one whose app reads the body)."""
    held: list[socket.socket] = []
    try:
        for _ in range(each):
            for request in HALF_BODIES.values():
                sock = socket.create_connection((host, port), timeout=10)
                sock.sendall(request.replace(b"/sync/sandbox", path.encode()))
                held.append(sock)
        time.sleep(0.3)  # the server has seen every connection and every byte
        yield held
    finally:
        for sock in held:
            sock.close()


def fresh_get(port: int, path: str = "/healthz", host: str = "127.0.0.1",
              timeout: float = 30.0) -> float:
    """Seconds for one GET on a new connection (as a kubelet probe makes it), answer read."""
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path} answered {data[:100]!r}")
    return time.perf_counter() - start


def latencies(call: Callable[[], float], count: int, pause: float = 0.005) -> list[float]:
    samples = []
    for _ in range(count):
        samples.append(call())
        time.sleep(pause)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
