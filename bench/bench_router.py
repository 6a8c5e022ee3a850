"""Router benchmark: what the router adds over a direct connection to the same upstream.

`python -m bench router [--quick]`. Starts a fast upstream (bench/upstream.py: an aiohttp app
in its own process, standing in for the runtime's small JSON answers and large downloads) and
the real `sandbox-router` process in front of it, on loopback. Every figure is measured twice in the
same run, through the router and directly, so the direct figure is the floor:

- added latency of a proxied POST /execute on one keep-alive connection (p50, p99)
- GET / at 16 keep-alive connections, requests/s (client in this process, 2-core machine)
- a 100 MiB download, MB/s, with the router's RSS sampled throughout
- 500 concurrent keep-alive connections, each used twice, errors counted

Component `router-k8s` (when the control-plane binaries of `make k8s` are there): the same
router with its Kubernetes source, on a real kube-apiserver holding one Ready Sandbox, to price
the uid rules (docs/router.md): a POST /execute with X-Sandbox-UID, name only with the default
confirmation (a direct read per request), name only with the opt-in
`--name-confirmation connection` (a read per connection), each on one keep-alive connection,
then a new connection per request, and 500 connections used twice; with the API-server reads
each costs, from the router's own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import keepalive
from bench.harness import Context, Latencies, Result, latency_result, rss_mib, time_calls
from sandbox_common import contract
from testbed.support import free_port, serve

COMPONENT = "router"
K8S_COMPONENT = "router-k8s"
TOKEN = "bench-token"
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
ROUTER = [str(Path(sys.executable).parent / "sandbox-router")]


@contextlib.contextmanager
def _process(argv: list[str], port: int, env: dict[str, str] | None = None):
    with serve(argv, port, env=env, timeout=20, quiet=True, cwd=REPO) as process:
        yield process


@contextlib.contextmanager
def _stack():
    """The upstream (bench/upstream.py) and the real router in front of it (static source)."""
    up_port, router_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "sandboxes.json"
        static.write_text(json.dumps({"allow_loopback": True, "sandboxes": {
            "default/bench": {"addresses": ["127.0.0.1"], "ports": [up_port]}}}))
        with _process([sys.executable, "-m", "bench.upstream", str(up_port)], up_port), \
             _process([*ROUTER, "--host", "127.0.0.1", "--port", str(router_port),
                       "--static-file", str(static)], router_port,
                      env={"SANDBOX_ROUTER_TOKEN": TOKEN}) as router:
            yield up_port, router_port, router


ROUTING = {"Authorization": f"Bearer {TOKEN}", contract.SANDBOX_ID_HEADER: "bench"}


def _headers(port: int, proxied: bool) -> dict[str, str]:
    return {**ROUTING, contract.SANDBOX_PORT_HEADER: str(port)} if proxied else {}


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
            rate, err = asyncio.run(keepalive.throughput(
                router_port, keepalive.get_request(_headers(up_port, True)), 16, seconds))
            via.append(rate)
            errs += err
            rate, err = asyncio.run(keepalive.throughput(
                up_port, keepalive.get_request(_headers(up_port, False)), 16, seconds))
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
        ok, errors, elapsed = asyncio.run(keepalive.hold(
            router_port, keepalive.get_request(_headers(up_port, True)), 500))
        rss_after = rss_mib(pid)
        ok_direct, errors_direct, elapsed_direct = asyncio.run(
            keepalive.hold(up_port, keepalive.get_request(_headers(up_port, False)), 500))
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
    from testbed import kube

    with tempfile.TemporaryDirectory() as tmp:
        plane = kube.start(Path(tmp) / "plane", crds=kube.crd_files(), controller_manager=False)
        try:
            from kubernetes import client

            api = plane.api_client()
            custom = client.CustomObjectsApi(api)
            made: Any = custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, "default", contract.SANDBOXES,
                {"apiVersion": contract.SANDBOX_API, "kind": contract.SANDBOX_KIND,
                 "metadata": {"name": "bench"},
                 "spec": {"podTemplate": {"spec": {"containers": [
                     {"name": "runtime", "image": "bench",
                      "ports": [{"containerPort": up_port}]}]}}}})
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, "default", contract.SANDBOXES, "bench",
                {"status": {"podIPs": ["127.0.0.1"], "podName": "bench", "conditions": [
                    {"type": contract.READY, "status": "True", "reason": contract.SANDBOX_READY,
                     "message": "bench", "lastTransitionTime": now}]}})
            api.close()
            yield plane, made["metadata"]["uid"]
        finally:
            plane.stop()


@contextlib.contextmanager
def _kube_router(kubeconfig: Path, *extra: str):
    port = free_port()
    with _process([*ROUTER, "--host", "127.0.0.1", "--port", str(port), "--source", "kubernetes",
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
    from testbed import kube

    missing = kube.missing_binaries()
    if missing:  # the static figures stand; this component keeps its last ones
        print(f"   {K8S_COMPONENT} skipped: control plane binaries missing "
              f"({', '.join(missing)}): run `make k8s`", flush=True)
        return []
    results: list[Result] = []
    named = {**ROUTING, contract.SANDBOX_PORT_HEADER: str(up_port)}
    with _control_plane(up_port) as (plane, uid):
        with_uid = {**named, contract.SANDBOX_UID_HEADER: uid}
        with _kube_router(plane.kubeconfig) as (port, url), \
                _kube_router(plane.kubeconfig, "--name-confirmation", "connection") as (
                    loose_port, loose_url):
            # (label, router port, its URL, headers, new connection per request, held to
            # the router's added-latency goal: the cases that make no API read per request)
            cases = [
                ("X-Sandbox-UID", port, url, with_uid, False, True),
                ("name only, confirmed per request (default), keep-alive", port, url, named,
                 False, False),
                ("name only, --name-confirmation connection, keep-alive", loose_port,
                 loose_url, named, False, True),
                ("name only, a new connection per request", port, url, named, True, False),
                ("X-Sandbox-UID, a new connection per request", port, url, with_uid, True,
                 False),
            ]
            for label, at, base, headers, fresh, held in cases:
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
                    if held:
                        goal, met = "added <= 1 ms p50 (over direct)", added <= 1.0
                results.append(latency_result(
                    K8S_COMPONENT, f"POST /execute, {label}", lat, goal=goal, met=met,
                    floor_name="static router" + (", new connection" if fresh else ""),
                    ratio_to_floor=lat.median("p50") / floor.median("p50"), notes=notes,
                    extra=extra))
            before = _reads(url)
            ok, errors, elapsed = asyncio.run(keepalive.hold(port, keepalive.get_request(named),
                                                             500))
            reads = _reads(url) - before
            results.append(Result(
                component=K8S_COMPONENT,
                name="500 concurrent keep-alive connections, name only", unit="s",
                throughput=ok / elapsed, throughput_unit="req/s",
                goal="1000 requests, 0 errors, at most one API read per request",
                met=errors == 0 and ok == 1000 and reads <= 1000, rounds=1,
                notes=f"{ok} ok, {errors} errors in {elapsed:.2f} s; {reads:.0f} API reads",
                extra={"ok": ok, "errors": errors, "reads": reads}))
    return results


if __name__ == "__main__":
    print("usage: python -m bench router [--quick]  (this module is run by the harness)")
