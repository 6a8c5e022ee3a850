"""Streaming both ways: output arrives as the sandbox produces it, nothing is held whole.

Real router process; the upstream's NDJSON stream is gated by the test itself, so a router
that buffered would block the test (and fail it by read timeout) instead of passing slowly.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
import requests

from tests.http.router_fixtures import pattern_sha256


@pytest.fixture
def env(router_stack):
    """The session's router in front of the test upstreams (tests/http/conftest.py)."""
    return router_stack


def router_pid(env) -> int:
    # The router process is the only listener on its port that we started: find it by port.
    inode = None
    port_hex = f"{env.router_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":" + port_hex) and fields[3] == "0A":
                inode = fields[9]
    assert inode is not None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError("router process not found")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_ndjson_lines_arrive_as_they_are_produced(env):
    response = requests.get(env.url + "/__stream?gate=nd&n=4", headers=env.headers(),
                            stream=True, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = response.iter_lines()
    for index in range(4):
        # Line `index` must be readable while the upstream still waits for us to open its
        # gate: a buffering router would hold it back and this read would time out.
        assert json.loads(next(lines)) == {"line": index}
        env.upstream.gate(f"nd-{index}").set()
    assert list(lines) == []


def test_large_download_streams_intact(env):
    size = 64 * 1024 * 1024 + 12345
    pid = router_pid(env)
    before = rss_mib(pid)
    response = requests.get(env.url + f"/__big?size={size}", headers=env.headers(),
                            stream=True, timeout=30)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == size
    digest, got, peak = hashlib.sha256(), 0, before
    for chunk in response.iter_content(1024 * 1024):
        digest.update(chunk)
        got += len(chunk)
        peak = max(peak, rss_mib(pid))
    assert got == size
    assert digest.hexdigest() == pattern_sha256(size)
    # Sanity bound: the router never held a large part of the 64 MiB body.
    assert peak - before < 32, (before, peak)


def test_upload_streams_before_the_client_finishes(env):
    gate = env.upstream.gate("upload-1")

    def body():
        yield b"first part of the upload " * 100
        # The upstream must see the first part while we are still sending: if the router
        # waited for the whole body, this wait would fail.
        assert gate.wait(10), "upstream saw nothing before the upload finished"
        yield b"second part"

    response = requests.post(env.url + "/__upload_gate?gate=upload-1", data=body(),
                             headers=env.headers(), timeout=30)
    assert response.status_code == 200
    expected = b"first part of the upload " * 100 + b"second part"
    assert response.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_large_upload_streams_intact(env):
    size = 48 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)

    def body():
        for _ in range(size // len(chunk)):
            yield chunk

    expected = hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    response = requests.post(env.url + "/upload", data=body(), headers=env.headers(),
                             timeout=60)
    assert response.status_code == 200
    assert response.json()["body_size"] == size
    assert response.json()["body_sha256"] == expected


def test_concurrent_streams_do_not_mix(env):
    sizes = [3 * 1024 * 1024 + i for i in range(8)]
    results: dict[int, str] = {}

    def fetch(size: int) -> None:
        response = requests.get(env.url + f"/__big?size={size}", headers=env.headers(),
                                timeout=30)
        results[size] = hashlib.sha256(response.content).hexdigest()

    threads = [threading.Thread(target=fetch, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {size: pattern_sha256(size) for size in sizes}
