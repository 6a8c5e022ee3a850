"""Benchmarks of the runtime server (`sandbox-runtime`) on loopback, each against a floor.

Run by `python -m bench runtime [--quick]`. Starts one real server (gunicorn, one gthread
worker per CPU, as in a pod) on 127.0.0.1 with a temporary workspace, measures, and stops it.
Floors are measured in the same run: in-process `subprocess.run`, a raw loopback TCP round
trip, plain file IO. This machine is shared: compare ratios to the floor, not raw figures.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import (
    Context,
    Latencies,
    Result,
    latency_result,
    rss_mib,
    time_calls,
    tree_pids,
)
from testbed.slowclients import fresh_get, held_connections, latencies
from testbed.support import free_port, serve

COMPONENT = "runtime"
MIB = 1024 * 1024


@contextlib.contextmanager
def _server(workspace: Path):
    port = free_port()
    exe = str(Path(sys.executable).parent / "sandbox-runtime")
    env = {"SANDBOX_RUNTIME_MAX_UPLOAD_BYTES": str(200 * MIB),
           "SANDBOX_RUNTIME_MAX_CONCURRENT_COMMANDS": "32"}
    with serve([exe, "--port", str(port), "--host", "127.0.0.1", "--base-dir", str(workspace)],
               port, env=env, quiet=True) as proc:
        yield port, proc


class Client:
    """One keep-alive HTTP/1.1 connection, as an agent's client pool would hold it."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data

    def execute(self, command: str, **fields: object) -> dict:
        body = json.dumps({"command": command, **fields}).encode()
        return json.loads(self.call("POST", "/execute", body,
                                    {"Content-Type": "application/json"}))


def _multipart(name: str, size: int, boundary: str = "benchboundary"):
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(MIB)

    def body():
        yield head
        left = size
        while left > 0:
            piece = block[: min(MIB, left)]
            left -= len(piece)
            yield piece
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": str(len(head) + size + len(tail))}
    return body, headers


def _tcp_floor(iterations: int, rounds: int):
    """A 100-byte request and answer over loopback TCP: what any HTTP server must pay."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo():
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    client = socket.create_connection(server.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * 100

    def call():
        client.sendall(message)
        got = 0
        while got < len(message):
            got += len(client.recv(4096))

    lat = time_calls(call, iterations=iterations, rounds=rounds)
    client.close()
    server.close()
    return lat


def run(ctx: Context) -> list[Result]:
    results: list[Result] = []
    iterations = ctx.scale(300, 60)
    rounds = ctx.scale(5, 3)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        workspace = Path(tmp)
        with _server(workspace) as (port, proc):
            client = Client(port)

            # /execute versus in-process subprocess.run (the floor), same command.
            for command in ("echo hi", "true"):
                floor = time_calls(lambda c=command: subprocess.run(["sh", "-c", c],
                                                                      capture_output=True),
                                   iterations=iterations, rounds=rounds)
                lat = time_calls(lambda c=command: client.execute(c), iterations=iterations,
                                 rounds=rounds)
                over = (lat.median("p50") - floor.median("p50")) * 1e3
                results.append(latency_result(
                    COMPONENT, f"execute `{command}` (1 keep-alive conn)", lat,
                    goal="p50 <= floor + 1 ms", met=over <= 1.0,
                    floor_name=f"subprocess.run p50 {floor.median('p50') * 1e3:.2f} ms",
                    ratio_to_floor=lat.median("p50") / floor.median("p50"),
                    extra={"over_floor_ms": round(over, 3)}))

            # 16 connections at once, `true` each; floor: 16 threads in-process.
            per_conn = ctx.scale(100, 25)

            def blast(fn_factory) -> float:
                rates = []
                for _ in range(rounds):
                    fns = [fn_factory() for _ in range(16)]
                    threads = [threading.Thread(target=lambda f=f: [f() for _ in range(per_conn)])
                               for f in fns]
                    start = time.perf_counter()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    rates.append(16 * per_conn / (time.perf_counter() - start))
                return sorted(rates)[len(rates) // 2]

            floor_rate = blast(lambda: lambda: subprocess.run(["sh", "-c", "true"],
                                                              capture_output=True))
            clients = []

            def factory():
                c = Client(port)
                clients.append(c)
                return lambda: c.execute("true")

            rate = blast(factory)
            results.append(Result(
                component=COMPONENT, name="execute `true`, 16 connections", unit="cmd/s",
                throughput=rate, throughput_unit="cmd/s", goal=">= 800 cmd/s",
                met=rate >= 800, floor_name=f"16 threads subprocess.run {floor_rate:.0f}/s",
                ratio_to_floor=rate / floor_rate, samples=16 * per_conn * rounds,
                rounds=rounds))

            # GET / versus a raw loopback round trip.
            tcp = _tcp_floor(iterations * 3, rounds)
            lat = time_calls(lambda: client.call("GET", "/"), iterations=iterations * 3,
                             rounds=rounds)
            results.append(latency_result(
                COMPONENT, "GET /", lat, goal="p50 <= 0.5 ms", met=lat.median("p50") <= 0.0005,
                floor_name=f"loopback TCP round trip {tcp.median('p50') * 1e3:.3f} ms",
                ratio_to_floor=lat.median("p50") / tcp.median("p50")))

            # 1 MiB upload and download versus copying 1 MiB on the same disk.
            payload = os.urandom(MIB)
            src = workspace / "floor-src.bin"
            src.write_bytes(payload)
            floor = time_calls(lambda: shutil.copyfile(src, workspace / "floor-dst.bin"),
                               iterations=iterations, rounds=rounds)
            body_fn, headers = _multipart("one.bin", MIB)
            body = b"".join(body_fn())
            up = time_calls(lambda: client.call("POST", "/upload", body, headers),
                            iterations=iterations, rounds=rounds)
            down = time_calls(lambda: client.call("GET", "/download/one.bin"),
                              iterations=iterations, rounds=rounds)
            for name, lat in (("upload 1 MiB", up), ("download 1 MiB", down)):
                results.append(latency_result(
                    COMPONENT, name, lat, goal="p50 <= 5 ms", met=lat.median("p50") <= 0.005,
                    floor_name=f"file copy 1 MiB {floor.median('p50') * 1e3:.2f} ms",
                    ratio_to_floor=lat.median("p50") / floor.median("p50")))

            # 100 MiB upload: throughput, and the server's RSS while it streams.
            size = ctx.scale(100, 100) * MIB
            big = workspace / "floor-big.bin"
            block = os.urandom(MIB)
            start = time.perf_counter()
            with open(big, "wb") as f:
                for _ in range(size // MIB):
                    f.write(block)
            floor_rate = size / (time.perf_counter() - start) / 1e6
            big.unlink()
            peak = [0.0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    for pid in tree_pids(proc.pid):
                        with contextlib.suppress(Exception):
                            peak[0] = max(peak[0], rss_mib(pid))
                    time.sleep(0.02)

            rates = []
            for _ in range(ctx.scale(3, 1)):
                body_fn, headers = _multipart("big.bin", size)
                sampler = threading.Thread(target=sample, daemon=True)
                stop.clear()
                sampler.start()
                start = time.perf_counter()
                client.call("POST", "/upload", body_fn(), headers)
                rates.append(size / (time.perf_counter() - start) / 1e6)
                stop.set()
                sampler.join()
            rate = sorted(rates)[len(rates) // 2]
            results.append(Result(
                component=COMPONENT, name="upload 100 MiB", unit="MB/s", throughput=rate,
                throughput_unit="MB/s", peak_rss_mib=peak[0],
                goal=">= 200 MB/s, server RSS <= 64 MiB",
                met=rate >= 200 and peak[0] <= 64,
                floor_name=f"file write {floor_rate:.0f} MB/s", ratio_to_floor=rate / floor_rate,
                rounds=len(rates), samples=len(rates),
                notes="peak RSS is the largest single server process (master or worker)"))
            start = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/download/big.bin")
            response = conn.getresponse()
            got = 0
            while chunk := response.read(MIB):
                got += len(chunk)
            down_rate = got / (time.perf_counter() - start) / 1e6
            conn.close()
            results.append(Result(
                component=COMPONENT, name="download 100 MiB", unit="MB/s", throughput=down_rate,
                throughput_unit="MB/s", goal=">= 200 MB/s", met=down_rate >= 200,
                floor_name=f"file write {floor_rate:.0f} MB/s",
                ratio_to_floor=down_rate / floor_rate, rounds=1, samples=1))

            # /healthz on new connections while 64 idle + 64 half-header connections are held.
            probes = ctx.scale(200, 50)
            alone = time_calls(lambda: fresh_get(port), iterations=probes, rounds=rounds,
                               warmup=5)
            probe = Latencies()
            for _ in range(rounds):
                with held_connections(port, idle=64, half=64):
                    probe.add_round(latencies(lambda: fresh_get(port), probes))
            results.append(latency_result(
                COMPONENT, "/healthz (new connection), 64 idle + 64 half-header connections "
                "held", probe, goal="p99 <= 100 ms", met=probe.median("p99") <= 0.1,
                floor_name=f"/healthz, nothing held: p50 {alone.median('p50') * 1e3:.2f} ms",
                ratio_to_floor=probe.median("p50") / alone.median("p50")))

            # The escape (subshell, env -i, setsid, every fd closed), 1 s timeout.
            times, survivors = [], 0
            for i in range(ctx.scale(5, 2)):
                token = f"98765{i}{os.getpid()}"
                start = time.perf_counter()
                out = client.execute(
                    f"(env -i setsid sh -c 'exec sleep {token} </dev/null >/dev/null 2>&1' &); "
                    f"sleep {token}", timeout=1)
                times.append(time.perf_counter() - start)
                assert out["timed_out"], out
                time.sleep(0.05)
                survivors += sum(1 for pid in os.listdir("/proc") if pid.isdigit()
                                 and _cmdline_has(pid, token))
            times.sort()
            p50 = times[len(times) // 2]
            results.append(Result(
                component=COMPONENT, name="timeout 1 s, env -i setsid escape, fds closed",
                unit="s", p50=p50,
                p95=times[-1], p99=times[-1], goal="answered <= 1.5 s, no survivor",
                met=p50 <= 1.5 and survivors == 0, floor_name="the 1 s timeout",
                ratio_to_floor=p50 / 1.0, samples=len(times), rounds=1,
                extra={"survivors": survivors}))
            for c in [client, *clients]:
                c.conn.close()
    return results


def _cmdline_has(pid: str, token: str) -> bool:
    try:
        return token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
