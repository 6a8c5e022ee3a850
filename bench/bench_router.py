"""Router benchmark: what the router adds over a direct connection to the same upstream.

`python -m bench router [--quick]`. Starts a fast upstream (an aiohttp app in its own
process, standing in for the runtime's small JSON answers and large downloads) and the real
`sandbox-router` process in front of it, on loopback. Every figure is measured twice in the
same run, through the router and directly, so the direct figure is the floor:

- added latency of a proxied POST /execute on one keep-alive connection (p50, p99)
- GET / at 16 keep-alive connections, requests/s (client in this process, 2-core machine)
- a 100 MiB download, MB/s, with the router's RSS sampled throughout
- 500 concurrent keep-alive connections, each used twice, errors counted

Component `router-k8s` (when the control-plane binaries of `make k8s` are there): the same
router with its Kubernetes source, on a real kube-apiserver holding one Ready Sandbox, to price
the uid rules (docs/router.md): a POST /execute with X-Sandbox-UID, name only with the default
once-per-connection confirmation, name only with `--name-confirmation request` (a direct read
per request), a new connection per request (one read each), and 500 connections used twice;
with the API-server reads each costs, from the router's own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Context, Latencies, Result, latency_result, rss_mib, time_calls

COMPONENT = "router"
K8S_COMPONENT = "router-k8s"
TOKEN = "bench-token"
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# --- the upstream, run as `python -m bench.bench_router --upstream PORT` --------------------

def serve_upstream(port: int) -> None:
    from aiohttp import web

    block = bytes(range(256)) * 4096  # 1 MiB

    async def root(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def execute(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"stdout": body.get("command", ""), "stderr": "",
                                  "exit_code": 0})

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        while size > 0:
            chunk = block[: min(size, len(block))]
            size -= len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_post("/execute", execute)
    app.router.add_get("/big", big)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


# --- processes -------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def _process(argv: list[str], port: int, env: dict[str, str] | None = None):
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, cwd=REPO)
    try:
        _wait_port(port, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _stack():
    up_port, router_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "sandboxes.json"
        static.write_text(json.dumps({"allow_loopback": True, "sandboxes": {
            "default/bench": {"addresses": ["127.0.0.1"], "ports": [up_port]}}}))
        router_bin = Path(sys.executable).parent / "sandbox-router"
        router_cmd = ([str(router_bin)] if router_bin.exists()
                      else [sys.executable, "-m", "sandbox_router"])
        with _process([sys.executable, "-m", "bench.bench_router", "--upstream", str(up_port)],
                      up_port), \
             _process([*router_cmd, "--host", "127.0.0.1", "--port", str(router_port),
                       "--static-file", str(static)], router_port,
                      env={"SANDBOX_ROUTER_TOKEN": TOKEN}) as router:
            yield up_port, router_port, router


ROUTING = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "bench"}


def _headers(port: int, proxied: bool) -> dict[str, str]:
    return {**ROUTING, "X-Sandbox-Port": str(port)} if proxied else {}


# --- 1. added latency on one keep-alive connection -------------------------------------------

def _latency(port: int, up_port: int, proxied: bool, ctx: Context,
             routing: dict[str, str] | None = None, *, fresh: bool = False) -> Latencies:
    """POST /execute timed on one keep-alive connection (`fresh`: a new connection for each
    request, its connect included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"command": "echo hi"}).encode()
    sent = routing if routing is not None else _headers(up_port, proxied)
    headers = {"Content-Type": "application/json", **sent}

    def call() -> None:
        nonlocal conn
        if fresh:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/execute", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or b"exit_code" not in data:
            raise RuntimeError(f"bad answer {response.status}: {data[:100]!r}")

    scale = 5 if fresh else 1  # a new connection each time: fewer, or the ports run out
    try:
        return time_calls(call, iterations=ctx.scale(2000, 300) // scale,
                          rounds=ctx.scale(5, 3), warmup=200 // scale)
    finally:
        conn.close()


# --- 2/4. raw asyncio HTTP/1.1 keep-alive client ---------------------------------------------

async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


def _request_bytes(up_port: int, proxied: bool, routing: dict[str, str] | None = None) -> bytes:
    lines = ["GET / HTTP/1.1", "Host: bench"]
    sent = routing if routing is not None else _headers(up_port, proxied)
    lines += [f"{k}: {v}" for k, v in sent.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _throughput(port: int, request: bytes, connections: int, seconds: float) -> tuple[
        float, int]:
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await _open(port)
        try:
            while time.perf_counter() < stop:
                if await _get(reader, writer, request) == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - started), errors


async def _hold(port: int, request: bytes, connections: int) -> tuple[int, int, float]:
    """Open `connections` keep-alive connections, use each, hold them all, use each again."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = ok = 0
    started = time.perf_counter()
    try:
        for batch in range(0, connections, 100):
            opened += await asyncio.gather(*(_open(port) for _ in range(
                min(100, connections - batch))))
        for _ in range(2):
            results = await asyncio.gather(*(_get(r, w, request) for r, w in opened),
                                           return_exceptions=True)
            ok += sum(1 for x in results if x == 200)
            errors += sum(1 for x in results if x != 200)
    finally:
        for _, writer in opened:
            writer.close()
    return ok, errors, time.perf_counter() - started


# --- 3. large download -----------------------------------------------------------------------

def _download(port: int, up_port: int, proxied: bool, size: int, pid: int | None) -> tuple[
        float, float, float]:
    """MB/s, and the router's RSS before and at peak (MiB) when pid is given."""
    before = peak = rss_mib(pid) if pid else 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if pid:
        sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", f"/big?size={size}", headers=_headers(up_port, proxied))
    response = conn.getresponse()
    got = 0
    while True:
        chunk = response.read(MIB)
        if not chunk:
            break
        got += len(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    stop.set()
    if pid:
        sampler.join()
    if got != size:
        raise RuntimeError(f"download returned {got} of {size} bytes")
    return size / elapsed / 1e6, before, peak


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(ctx: Context) -> list[Result]:
    _raise_fd_limit()
    results: list[Result] = []
    with _stack() as (up_port, router_port, router):
        pid = router.pid

        # 1. latency
        proxied = _latency(router_port, up_port, True, ctx)
        direct = _latency(up_port, up_port, False, ctx)
        added50 = (proxied.median("p50") - direct.median("p50")) * 1e3
        added99 = (proxied.median("p99") - direct.median("p99")) * 1e3
        results.append(latency_result(
            COMPONENT, "POST /execute, 1 keep-alive connection", proxied,
            goal="added <= 1 ms p50, <= 3 ms p99", met=added50 <= 1.0 and added99 <= 3.0,
            floor_name="direct to upstream",
            ratio_to_floor=proxied.median("p50") / direct.median("p50"),
            notes=f"added {added50:.3f} ms at p50, {added99:.3f} ms at p99 over direct "
                  f"(direct p50 {direct.median('p50') * 1e3:.3f} ms)",
            extra={"added_p50_ms": added50, "added_p99_ms": added99,
                   "direct_p50_ms": direct.median("p50") * 1e3,
                   "direct_p99_ms": direct.median("p99") * 1e3}))
        results.append(latency_result(COMPONENT, "POST /execute direct to the upstream (floor)",
                                      direct))

        # 2. throughput at 16 connections
        seconds, rounds = (1.0, 3) if ctx.quick else (3.0, 5)
        via, floor, errs = [], [], 0
        for _ in range(rounds):
            rate, err = asyncio.run(_throughput(router_port, _request_bytes(up_port, True), 16,
                                                seconds))
            via.append(rate)
            errs += err
            rate, err = asyncio.run(_throughput(up_port, _request_bytes(up_port, False), 16,
                                                seconds))
            floor.append(rate)
        rps, rps_floor = statistics.median(via), statistics.median(floor)
        results.append(Result(
            component=COMPONENT, name="GET /, 16 keep-alive connections", unit="req/s",
            throughput=rps, throughput_unit="req/s", goal=">= 800 req/s, no errors",
            met=rps >= 800 and errs == 0, floor_name="direct to upstream",
            ratio_to_floor=rps / rps_floor, rounds=rounds,
            notes=f"direct {rps_floor:.0f} req/s; errors {errs}",
            extra={"direct_rps": rps_floor, "errors": errs}))

        # 3. 100 MiB download
        size = 100 * MIB
        reps = ctx.scale(5, 2)
        via_dl, floor_dl, growth, peaks = [], [], [], []
        for _ in range(reps):
            rate, before, peak = _download(router_port, up_port, True, size, pid)
            via_dl.append(rate)
            growth.append(peak - before)
            peaks.append(peak)
            floor_dl.append(_download(up_port, up_port, False, size, None)[0])
        mbps, mbps_floor = statistics.median(via_dl), statistics.median(floor_dl)
        worst_growth = max(growth)
        results.append(Result(
            component=COMPONENT, name="100 MiB download", unit="MB/s", throughput=mbps,
            throughput_unit="MB/s", peak_rss_mib=max(peaks),
            goal=">= 300 MB/s, router RSS flat (< 32 MiB growth)",
            met=mbps >= 300 and worst_growth < 32, floor_name="direct to upstream",
            ratio_to_floor=mbps / mbps_floor, rounds=reps,
            notes=f"direct {mbps_floor:.0f} MB/s; router RSS grew at most "
                  f"{worst_growth:.1f} MiB during a download",
            extra={"direct_mbps": mbps_floor, "rss_growth_mib": growth}))

        # 4. 500 concurrent keep-alive connections
        rss_before = rss_mib(pid)
        ok, errors, elapsed = asyncio.run(_hold(router_port, _request_bytes(up_port, True), 500))
        rss_after = rss_mib(pid)
        ok_direct, errors_direct, elapsed_direct = asyncio.run(
            _hold(up_port, _request_bytes(up_port, False), 500))
        results.append(Result(
            component=COMPONENT, name="500 concurrent keep-alive connections", unit="s",
            throughput=ok / elapsed, throughput_unit="req/s", peak_rss_mib=rss_after,
            goal="1000 requests on 500 held connections, 0 errors",
            met=errors == 0 and ok == 1000, floor_name="direct to upstream",
            ratio_to_floor=elapsed / elapsed_direct if elapsed_direct else None, rounds=1,
            notes=f"{ok} ok, {errors} errors in {elapsed:.2f} s (direct {ok_direct} ok, "
                  f"{errors_direct} errors, {elapsed_direct:.2f} s); router RSS "
                  f"{rss_before:.1f} -> {rss_after:.1f} MiB",
            extra={"ok": ok, "errors": errors, "direct_errors": errors_direct}))
        static_fresh = _latency(router_port, up_port, True, ctx, fresh=True)
        results.append(latency_result(
            COMPONENT, "POST /execute, a new connection per request", static_fresh,
            notes="static source; the floor of the Kubernetes source's per-connection cost"))
        results += _kubernetes_source(ctx, up_port, direct, proxied, static_fresh)
    return results


# --- the Kubernetes source: what the uid rules cost ------------------------------------------

def _reads(url: str) -> float:
    """All direct Sandbox reads a router made (sandbox_router_sandbox_reads_total)."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sandbox_router_sandbox_reads_total{"))


@contextlib.contextmanager
def _control_plane(up_port: int):
    """A loopback kube-apiserver with the CRDs and one Ready Sandbox `bench` at 127.0.0.1."""
    from tests.controlplane import kube

    with tempfile.TemporaryDirectory() as tmp:
        plane = kube.start(Path(tmp) / "plane", crds=kube.crd_files(), controller_manager=False)
        try:
            from kubernetes import client

            api = plane.api_client()
            custom = client.CustomObjectsApi(api)
            made: Any = custom.create_namespaced_custom_object(
                "agents.x-k8s.io", "v1alpha1", "default", "sandboxes",
                {"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox",
                 "metadata": {"name": "bench"},
                 "spec": {"podTemplate": {"spec": {"containers": [
                     {"name": "runtime", "image": "bench",
                      "ports": [{"containerPort": up_port}]}]}}}})
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            custom.patch_namespaced_custom_object_status(
                "agents.x-k8s.io", "v1alpha1", "default", "sandboxes", "bench",
                {"status": {"podIPs": ["127.0.0.1"], "podName": "bench", "conditions": [
                    {"type": "Ready", "status": "True", "reason": "SandboxReady",
                     "message": "bench", "lastTransitionTime": now}]}})
            api.close()
            yield plane, made["metadata"]["uid"]
        finally:
            plane.stop()


@contextlib.contextmanager
def _kube_router(kubeconfig: Path, *extra: str):
    port = _free_port()
    router_bin = Path(sys.executable).parent / "sandbox-router"
    argv = ([str(router_bin)] if router_bin.exists() else [sys.executable, "-m", "sandbox_router"])
    with _process([*argv, "--host", "127.0.0.1", "--port", str(port), "--source", "kubernetes",
                   "--namespace", "default", "--allow-loopback-pods", *extra], port,
                  env={"SANDBOX_ROUTER_TOKEN": TOKEN, "KUBECONFIG": str(kubeconfig)}):
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(urllib.error.URLError):
                if urllib.request.urlopen(url + "/readyz", timeout=5).status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("router cache never synced")
            time.sleep(0.1)
        yield port, url


def _kubernetes_source(ctx: Context, up_port: int, direct: Latencies, static: Latencies,
                       static_fresh: Latencies) -> list[Result]:
    """Each case beside the static router measured in the same run: on one keep-alive
    connection (floors: direct to the upstream, and the static router), or a new connection
    per request (floor: the static router, new connection per request)."""
    from tests.controlplane import kube

    missing = kube.missing_binaries()
    if missing:  # the static figures stand; this component keeps its last ones
        print(f"   {K8S_COMPONENT} skipped: control plane binaries missing "
              f"({', '.join(missing)}): run `make k8s`", flush=True)
        return []
    results: list[Result] = []
    named = {**ROUTING, "X-Sandbox-Port": str(up_port)}
    with _control_plane(up_port) as (plane, uid):
        with_uid = {**named, "X-Sandbox-UID": uid}
        with _kube_router(plane.kubeconfig) as (port, url), \
                _kube_router(plane.kubeconfig, "--name-confirmation", "request") as (
                    strict_port, strict_url):
            cases = [
                ("X-Sandbox-UID", port, url, with_uid, False),
                ("name only, confirmed once per connection (default)", port, url, named, False),
                ("name only, --name-confirmation request", strict_port, strict_url, named,
                 False),
                ("name only, a new connection per request", port, url, named, True),
                ("X-Sandbox-UID, a new connection per request", port, url, with_uid, True),
            ]
            for label, at, base, headers, fresh in cases:
                before = _reads(base)
                lat = _latency(at, up_port, True, ctx, headers, fresh=fresh)
                calls = lat.samples + (200 // 5 if fresh else 200)  # with the warm-up
                per = (_reads(base) - before) / calls
                floor = static_fresh if fresh else static
                over = {q: (lat.median(q) - floor.median(q)) * 1e3 for q in ("p50", "p99")}
                extra = {"over_static_p50_ms": over["p50"], "over_static_p99_ms": over["p99"],
                         "reads_per_request": per}
                notes = (f"{over['p50']:+.3f} ms p50 / {over['p99']:+.3f} ms p99 against the "
                         f"static router ({'new connection per request' if fresh else 'same'})"
                         f"; {per:.3f} API reads per request")
                goal, met = "", None
                if not fresh:
                    added = (lat.median("p50") - direct.median("p50")) * 1e3
                    extra["added_p50_ms"] = added
                    notes = f"added {added:.3f} ms p50 over direct; " + notes
                    if "request" not in label:
                        goal, met = "added <= 1 ms p50 (over direct)", added <= 1.0
                results.append(latency_result(
                    K8S_COMPONENT, f"POST /execute, {label}", lat, goal=goal, met=met,
                    floor_name="static router" + (", new connection" if fresh else ""),
                    ratio_to_floor=lat.median("p50") / floor.median("p50"), notes=notes,
                    extra=extra))
            before = _reads(url)
            ok, errors, elapsed = asyncio.run(_hold(port, _request_bytes(up_port, True, named),
                                                    500))
            reads = _reads(url) - before
            results.append(Result(
                component=K8S_COMPONENT,
                name="500 concurrent keep-alive connections, name only", unit="s",
                throughput=ok / elapsed, throughput_unit="req/s",
                goal="1000 requests, 0 errors, one API read per connection",
                met=errors == 0 and ok == 1000 and reads <= 500, rounds=1,
                notes=f"{ok} ok, {errors} errors in {elapsed:.2f} s; {reads:.0f} API reads",
                extra={"ok": ok, "errors": errors, "reads": reads}))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        serve_upstream(int(sys.argv[2]))
    else:
        print("usage: python -m bench router [--quick]  (this module is run by the harness)")
