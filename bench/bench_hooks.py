"""Hook server benchmarks: sync latency and throughput through gunicorn on loopback.

Floor: the same gunicorn settings serving bench/echo_app.py (parse nothing, answer the body),
measured in the same run, so the ratio shows what our hooks add over bare HTTP.
Scale curve: a warm pool's sync with 1, 100 and 1,000 member pods.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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
from testbed.hookrequests import (
    SEED_POD_TEMPLATE,
    owned,
    resource,
    sandbox,
    sync_request,
    with_pod_status,
)
from testbed.slowclients import fresh_get, held_connections, latencies
from testbed.support import free_port, serve

REPO = Path(__file__).resolve().parent.parent

WORKERS = 2


@contextmanager
def gunicorn(app: str):
    port = free_port()
    argv = [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:hooks.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), app]
    with serve(argv, port, env={"SANDBOX_HOOKS_ACCESS_LOG": ""}, quiet=True, cwd=REPO) as process:
        time.sleep(0.5)  # workers booted
        yield port, process


def poster(port: int, path: str, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {data[:200]!r}")
    return call


def _load_worker(args: tuple[int, str, bytes, float]) -> int:
    port, path, body, seconds = args
    call = poster(port, path, body)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        call()
        done += 1
    return done


def throughput(port: int, path: str, body: bytes, *, clients: int, seconds: float) -> float:
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        counts = pool.map(_load_worker, [(port, path, body, seconds)] * clients)
    return sum(counts) / seconds


def pool_request(members: int) -> bytes:
    pool = resource("SandboxWarmPool", "pool", {
        "replicas": members, "sandboxTemplateRef": {"name": "python-runtime-template"}})
    template = resource("SandboxTemplate", "python-runtime-template",
                        {"podTemplate": SEED_POD_TEMPLATE})
    from hooks import sandboxwarmpool

    first = sandboxwarmpool.sync(sync_request(pool, related=[template]),
                                 now=datetime.now(UTC) - timedelta(seconds=1))
    children = [with_pod_status(owned(c, pool), ready=True) for c in first["children"]]
    return json.dumps(sync_request(pool, children, [template])).encode()


def timed(call):
    def measure() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    return measure


def held_clients(port: int, one_pod: bytes, *, probes: int, rounds: int) -> list[Result]:
    """/healthz on new connections (a kubelet's probe) and sync POSTs on a kept-alive one
    (Metacontroller's), while 64 idle and 64 half-header connections are held open."""
    alone = time_calls(lambda: fresh_get(port), iterations=probes, rounds=rounds, warmup=5)
    probe, post = Latencies(), Latencies()
    sync = timed(poster(port, "/sync/sandbox", one_pod))
    for _ in range(rounds):
        with held_connections(port, idle=64, half=64):
            probe.add_round(latencies(lambda: fresh_get(port), probes))
            post.add_round(latencies(sync, probes))
    held = "64 idle + 64 half-header connections held"
    floor = f"/healthz, nothing held: p50 {alone.median('p50') * 1e3:.2f} ms"
    return [
        latency_result("hooks", f"/healthz (new connection), {held}", probe,
                       goal="p99 <= 100 ms", met=probe.median("p99") <= 0.1,
                       floor_name=floor,
                       ratio_to_floor=probe.median("p50") / alone.median("p50")),
        latency_result("hooks", f"sync sandbox (keep-alive), {held}", post,
                       goal="p99 <= 100 ms", met=post.median("p99") <= 0.1),
    ]


def run(ctx: Context) -> list[Result]:
    iterations, rounds = ctx.scale(2000, 200), ctx.scale(5, 2)
    seconds = ctx.scale(5.0, 1.5)
    one_pod = json.dumps(sync_request(sandbox("bench"))).encode()
    results: list[Result] = []

    with gunicorn("bench.echo_app:app") as (port, _):
        floor = time_calls(poster(port, "/sync/sandbox", one_pod), iterations=iterations,
                           rounds=rounds)
        floor_rate = throughput(port, "/", one_pod, clients=4, seconds=seconds)

    with gunicorn("hooks.app:create_app()") as (port, process):
        lat = time_calls(poster(port, "/sync/sandbox", one_pod), iterations=iterations,
                         rounds=rounds)
        rate = throughput(port, "/sync/sandbox", one_pod, clients=4, seconds=seconds)
        workers = [p for p in tree_pids(process.pid) if p != process.pid]
        worker_rss = max(rss_mib(p) for p in workers)
        p50, p99 = lat.median("p50") * 1e3, lat.median("p99") * 1e3
        results.append(latency_result(
            "hooks", "sync sandbox (1 pod), one keep-alive connection", lat,
            goal="p50 <= 1 ms, p99 <= 5 ms", met=p50 <= 1.0 and p99 <= 5.0,
            floor_name="bare WSGI echo, same gunicorn", peak_rss_mib=worker_rss,
            ratio_to_floor=lat.median("p50") / floor.median("p50"),
            extra={"floor_p50_ms": floor.median("p50") * 1e3}))
        results.append(Result(
            component="hooks", name=f"sync sandbox throughput, 4 clients, {WORKERS} workers",
            unit="", throughput=rate, throughput_unit="syncs/s", peak_rss_mib=worker_rss,
            goal=">= 1,000 syncs/s, <= 60 MiB RSS per worker",
            met=rate >= 1000 and worker_rss <= 60, floor_name="bare WSGI echo, same gunicorn",
            ratio_to_floor=rate / floor_rate, samples=int(rate * seconds), rounds=1,
            extra={"floor_per_s": floor_rate}))
        results += held_clients(port, one_pod, probes=ctx.scale(200, 50), rounds=rounds)
        for members in (1, 100, 1000):
            body = pool_request(members)
            scale_lat = time_calls(poster(port, "/sync/sandboxwarmpool", body),
                                   iterations=ctx.scale(max(20, 2000 // members), 10),
                                   rounds=rounds, warmup=3)
            results.append(latency_result(
                "hooks", f"sync warm pool with {members} pods", scale_lat,
                peak_rss_mib=max(rss_mib(p) for p in workers),
                notes=f"request body {len(body) / 2**20:.2f} MiB; RSS after these syncs",
                extra={"request_bytes": len(body)}))
    return results
