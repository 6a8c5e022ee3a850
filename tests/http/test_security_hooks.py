"""The hook server under attack over TCP: malformed Metacontroller requests, floods, slow clients.

A real `sandbox-hooks` (gunicorn, one worker, four threads, the smallest honest set-up) on
127.0.0.1. An answer of 200 is the dangerous one (Metacontroller applies it, and children
missing from it are deleted), so every malformed request must get a non-200 JSON error, and
/healthz must keep answering through floods. Records through `hostile`
(tests/security_report.py).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import pytest
import requests

from testbed.hookrequests import sandbox, sync_request


def healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _with(**changes) -> bytes:
    request = sync_request(sandbox("web"))
    for dotted, value in changes.items():
        target = request
        *path, last = dotted.split("__")
        for key in path:
            target = target[key]
        target[last] = value
    return json.dumps(request).encode()


MALFORMED = {
    "empty body": b"",
    "JSON null": b"null",
    "JSON string": b'"sync"',
    "JSON number": b"1e999",
    "NaN literal": b"NaN",
    "truncated JSON": b'{"parent": {"metadata": {"name": "web"',
    "invalid UTF-8": b'{"parent": "\xff\xfe"}',
    "UTF-16 BOM": "\ufeff{}".encode("utf-16"),
    "20k-deep nesting": _deep(20000),
    "parent missing": b'{"children": {}}',
    "parent a list": b'{"parent": []}',
    "parent name a number": b'{"parent": {"metadata": {"name": 5}}}',
    "children a list": _with(children=[]),
    "children group a list": _with(children={"Pod.v1": []}),
    "child without metadata": _with(children={"Pod.v1": {"web": {"kind": "Pod"}}}),
    "related a string": _with(related="everything"),
    "finalizing a string": _with(finalizing="true"),
    "duplicate keys, last one bad": b'{"parent": {"metadata": {"name": "web"}}, "parent": 1}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_never_get_a_200(hostile, hooks_url, case):
    with hostile("hooks", f"malformed request: {case}"):
        answer = requests.post(f"{hooks_url}/sync/sandbox", data=MALFORMED[case], timeout=10,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code in (400, 413, 500), answer.text[:200]
        assert set(answer.json()) == {"error"}
        assert "Traceback" not in answer.text and 'File "' not in answer.text
        assert healthy(hooks_url)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/sync/sandbox"), ("PUT", "/sync/sandbox"), ("DELETE", "/sync/sandbox"),
    ("POST", "/sync/../healthz"), ("POST", "/sync/sandbox/extra"), ("POST", "/%00/sandbox"),
    ("POST", "/sync/" + "s" * 5000), ("POST", "/healthz"), ("OPTIONS", "*"),
])
def test_odd_methods_and_paths_get_json_errors(hostile, hooks_url, method, path):
    with hostile("hooks", f"{method} {path[:40]}"):
        with socket.create_connection(("127.0.0.1", int(hooks_url.rsplit(":", 1)[1])),
                                      timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         "Connection: close\r\n\r\n{}".encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        status = int(raw.split(b" ", 2)[1])
        assert 400 <= status < 500, raw[:200]
        assert status != 200
        assert healthy(hooks_url)


def test_a_request_flood_leaves_healthz_answering(hostile, hooks_url):
    valid = json.dumps(sync_request(sandbox("web"))).encode()
    # Expected answers: bad input is a 400, never a 500 or a 200.
    bodies = {"valid sync": (valid, {200}), "garbage": (b"x" * 4096, {400}),
              "1 MiB of nesting": (_deep(512 * 1024), {400})}
    codes: Counter[tuple[str, int]] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def flood(kind: str) -> None:
        session = requests.Session()
        body = bodies[kind][0]
        while not stop.is_set():
            try:
                answer = session.post(f"{hooks_url}/sync/sandbox", data=body, timeout=30,
                                      headers={"Content-Type": "application/json"})
                codes[(kind, answer.status_code)] += 1
            except requests.RequestException as exc:
                errors.append(f"{kind}: {type(exc).__name__}")

    workers = [threading.Thread(target=flood, args=(kind,), daemon=True)
               for kind in bodies for _ in range(4)]
    for worker in workers:
        worker.start()
    probes = []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            probes.append(healthy(hooks_url, timeout=5))
            time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    for kind, (_, expected) in bodies.items():
        with hostile("hooks", f"flood of {kind} requests: every answer as expected"):
            got = {code for (k, code) in codes if k == kind}
            assert got and got <= expected, codes
    with hostile("hooks", "flood: /healthz answered throughout, no connection dropped"):
        assert probes and all(probes), probes
        assert errors == []


def test_slow_header_clients_do_not_starve_healthz(hostile, hooks_url):
    port = int(hooks_url.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(64):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /sync/sandbox HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(0.3)
        with hostile("hooks", "64 clients sending half a header (slowloris)"):
            assert healthy(hooks_url, timeout=3)
    finally:
        for sock in held:
            sock.close()
    assert healthy(hooks_url, timeout=10)


def test_deeply_nested_json_is_a_400(hostile, hooks_url):
    with hostile("hooks", "JSON nested 20,000 deep is bad input (400)"):
        answer = requests.post(f"{hooks_url}/sync/sandbox", data=_deep(20000), timeout=10,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 400
