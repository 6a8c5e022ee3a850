"""Fixtures for the router's HTTP tier: real upstream servers on loopback and the real router.

- `Upstream`: an aiohttp app in a thread (on 127.0.0.1, or another loopback address) that
  echoes what it received and who it is (`served_by`), streams NDJSON under
  the test's control (a gate the test opens), serves large bodies, sleeps, sets cookies.
- `RawUpstream`: a socket server that misbehaves on purpose (closes, cuts bodies) and records
  every connection; as `RecordingListener` it is the SSRF tripwire that must stay untouched.
- `start_router`: the real `sandbox-router` process with a static sandbox file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiohttp import web

from sandbox_common import contract
from testbed.support import free_port, script, serve

TOKEN = "router-test-token-0123456789"
PATTERN = bytes(range(256)) * 4096  # 1 MiB of a deterministic, incompressible-ish pattern


def pattern_bytes(size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = PATTERN[: min(left, len(PATTERN))]
        left -= len(chunk)
        yield chunk


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_bytes(size):
        digest.update(chunk)
    return digest.hexdigest()


class Upstream:
    """A well-behaved upstream in a background thread, on 127.0.0.1:<port>."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.requests: list[dict] = []
        self.gates: dict[str, threading.Event] = {}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def gate(self, key: str) -> threading.Event:
        return self.gates.setdefault(key, threading.Event())

    def paths(self) -> list[str]:
        return [r["raw_path"] for r in self.requests]

    def __enter__(self) -> Upstream:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        digest, size = hashlib.sha256(), 0
        if request.path == "/__upload_gate":
            # Tell the test the first bytes arrived while the client is still sending.
            first = await request.content.readany()
            digest.update(first)
            size += len(first)
            self.gate(request.query["gate"]).set()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        record = {
            "method": request.method, "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size, "body_sha256": digest.hexdigest(),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            "served_by": f"{self.host}:{self.port}",
        }
        self.requests.append(record)
        path, query = request.path, request.query
        if path == "/__stream":
            return await self._stream(request, query.get("gate", ""), int(query.get("n", "3")))
        if path == "/__big":
            size = int(query["size"])
            response = web.StreamResponse()
            response.content_length = size
            response.content_type = "application/octet-stream"
            await response.prepare(request)
            for chunk in pattern_bytes(size if request.method != "HEAD" else 0):
                await response.write(chunk)
            await response.write_eof()
            return response
        if path == "/__sleep":
            await asyncio.sleep(float(query["s"]))
            return web.json_response({"slept": float(query["s"])})
        if path == "/__stall":
            response = web.StreamResponse()
            # By default larger than the router's whole-body buffer, so the answer has begun.
            length = int(query.get("len", "1000000"))
            response.content_length = length
            await response.prepare(request)
            await response.write(b"x" * (length // 10))
            await asyncio.sleep(float(query.get("s", "30")))
            return response
        if path == "/__status":
            code = int(query["code"])
            # What a sandbox could send to make a client resend a command: the router's mark.
            forged = {"Retry-After": "1", contract.NOT_FORWARDED_HEADER: "true"} \
                if "forge" in query else {}
            return web.json_response({"upstream": code}, status=code, headers=forged)
        if path == "/__cookie":
            response = web.json_response({"set": True})
            response.headers.add("Set-Cookie", "a=1; Path=/")
            response.headers.add("Set-Cookie", "b=2; Path=/")
            return response
        if path == "/__gzip":
            body = gzip.compress(b"hello " * 1000)
            return web.Response(body=body, headers={"Content-Encoding": "gzip",
                                                    "Content-Type": "text/plain"})
        if path == "/__redirect":
            raise web.HTTPFound(query["to"])
        if path == "/__headers":
            response = web.json_response({"ok": True})
            response.headers.add("X-Multi", "one")
            response.headers.add("X-Multi", "two")
            response.headers["X-Upstream"] = "yes"
            response.headers["Connection"] = "X-Private"
            response.headers["X-Private"] = "hop"
            response.headers["Keep-Alive"] = "timeout=5"
            return response
        return web.json_response(record, headers={"X-Echo": "1"})

    async def _stream(self, request: web.Request, gate: str, lines: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        for index in range(lines):
            await response.write(json.dumps({"line": index}).encode() + b"\n")
            if gate and index < lines - 1:
                event = self.gate(f"{gate}-{index}")
                opened = await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)
                if not opened:
                    break
        await response.write_eof()
        return response


@dataclass
class RawUpstream:
    """Raw TCP server on 127.0.0.1 that records connections and misbehaves by path."""

    port: int = field(default_factory=free_port)
    connections: int = 0
    received: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while True:
            conn, _ = self._sock.accept()
            if self._stop:
                conn.close()
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        break
                    data += got
            self.received.append(data)
            line = data.split(b"\r\n", 1)[0]
            with contextlib.suppress(OSError):
                if b" /cut " in line:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 100)
                elif b" /cut-big " in line:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                                 + b"y" * 100_000)
                elif b" /cut-chunked " in line:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"a\r\n0123456789\r\n")
                elif b" /garbage " in line:
                    conn.sendall(b"this is not http\r\n\r\n")
                # anything else: close without a word


RecordingListener = RawUpstream


def write_static(path: Path, sandboxes: dict[str, dict], *, allow_loopback: bool) -> Path:
    data: dict = {"sandboxes": sandboxes}
    if allow_loopback:
        data["allow_loopback"] = True
    path.write_text(yaml.safe_dump(data))
    return path


def router_argv(port: int, *extra: str) -> list[str]:
    executable = Path(script("sandbox-router"))
    base = [str(executable)] if executable.exists() else [sys.executable, "-m", "sandbox_router"]
    return [*base, "--host", "127.0.0.1", "--port", str(port), *extra]


@contextlib.contextmanager
def start_router(static_file: Path, *extra: str, env: dict[str, str] | None = None,
                 token: str | None = TOKEN) -> Iterator[str]:
    """The real router process; yields its base URL."""
    port = free_port()
    environment = {"SANDBOX_ROUTER_ACCESS_LOG": "false"}
    if token is not None:
        environment["SANDBOX_ROUTER_TOKEN"] = token
    environment.update(env or {})
    with serve(router_argv(port, "--static-file", str(static_file), *extra), port,
               env=environment):
        yield f"http://127.0.0.1:{port}"


def raw_request(port: int, payload: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes as-is to 127.0.0.1:port; return everything read until close or timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                got = sock.recv(65536)
                if not got:
                    break
                chunks.append(got)
        return b"".join(chunks)


@dataclass
class Stack:
    """One router in front of an Upstream, a RawUpstream and a RecordingListener.

    Static sandboxes (namespace default unless said): `echo` -> Upstream, `raw` ->
    RawUpstream, `team/echo` -> Upstream too, `dead` -> a declared port nothing listens on,
    and SSRF bait that resolves to the tripwire through forms the policy must refuse.
    """

    url: str
    router_port: int
    upstream: Upstream
    raw: RawUpstream
    tripwire: RecordingListener
    dead_port: int

    def headers(self, sandbox: str = "echo", *, port: int | None = None,
                **extra: str) -> dict[str, str]:
        target_port = port if port is not None else (
            self.raw.port if sandbox == "raw" else self.upstream.port)
        return {"Authorization": f"Bearer {TOKEN}", contract.SANDBOX_ID_HEADER: sandbox,
                contract.SANDBOX_PORT_HEADER: str(target_port), **extra}


@contextlib.contextmanager
def stack(directory: Path, *router_args: str, env: dict[str, str] | None = None,
          allow_loopback: bool = True) -> Iterator[Stack]:
    with Upstream() as upstream, RawUpstream() as raw, RecordingListener() as tripwire:
        dead_port = free_port()
        trip = tripwire.port
        sandboxes = {
            "default/echo": {"addresses": ["127.0.0.1"], "ports": [upstream.port, 8888]},
            "team/echo": {"addresses": ["127.0.0.1"], "ports": [upstream.port]},
            "default/raw": {"addresses": ["127.0.0.1"], "ports": [raw.port]},
            "default/dead": {"addresses": ["127.0.0.1"], "ports": [dead_port]},
            # Each of these would reach the tripwire on Linux if the router connected.
            "default/mapped": {"addresses": ["::ffff:127.0.0.1"], "ports": [trip]},
            "default/zero": {"addresses": ["0.0.0.0"], "ports": [trip]},
            "default/zero6": {"addresses": ["::"], "ports": [trip]},
            "default/compat": {"addresses": ["::127.0.0.1"], "ports": [trip]},
            "default/metadata": {"addresses": ["169.254.169.254"], "ports": [80, trip]},
            "default/linklocal6": {"addresses": ["fe80::1"], "ports": [trip]},
            "default/multicast": {"addresses": ["224.0.0.1"], "ports": [trip]},
            "default/broadcast": {"addresses": ["255.255.255.255"], "ports": [trip]},
            "default/nat64": {"addresses": ["64:ff9b::7f00:1"], "ports": [trip]},
            "default/noaddr": {"addresses": [], "ports": [trip]},
        }
        static = write_static(directory / "sandboxes.yaml", sandboxes,
                              allow_loopback=allow_loopback)
        with start_router(static, *router_args, env=env) as url:
            yield Stack(url=url, router_port=int(url.rsplit(":", 1)[1]), upstream=upstream,
                        raw=raw, tripwire=tripwire, dead_port=dead_port)
