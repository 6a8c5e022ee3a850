"""Benchmarks of the client's local gVisor backend: sandbox creation and command round trips.

Run by `python -m bench client [--quick]` (quick: well under a minute). Needs root and runsc;
without them every figure is reported as skipped with the reason. Uses its own state folder.
Floors are measured in the same run: a bare `runsc run` of /bin/true (gVisor's own start and
stop), `sh -c true` started by a process already inside the sandbox, and `runsc exec true`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import Context, Latencies, Result, latency_result, time_calls

COMPONENT = "client"
TEMPLATE = "python-runtime-template"

FLOOR_SCRIPT = """
import subprocess, time
samples = []
for _ in range({n}):
    start = time.perf_counter()
    subprocess.run(["sh", "-c", "true"])
    samples.append(time.perf_counter() - start)
samples.sort()
print(samples[len(samples) // 2] * 1000)
"""


def _skip(reason: str) -> list[Result]:
    return [Result(component=COMPONENT, name=name, unit="ms", notes=f"skipped: {reason}")
            for name in ("local create -> first echo (cold)",
                         "local create -> first echo (warm pool)", "local run('true')",
                         "local async run('true')")]


def _bare_runsc_floor(runsc: str, work: Path, n: int) -> Latencies:
    """`runsc run` (to completion) + delete of a bundle whose process is /bin/true."""
    bundle = work / "bare"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 65534, "gid": 65534}, "args": ["/bin/true"],
                    "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
        "root": {"path": "/", "readonly": True},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in
                                 ("pid", "ipc", "uts", "mount", "network")]}}))
    root = work / "bare-root"
    samples = []
    for i in range(n):
        start = time.perf_counter()
        subprocess.run([runsc, "--root", str(root), "--platform=ptrace", "--network=none",
                        "run", "--bundle", str(bundle), f"bench-bare-{i}"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, timeout=60)
        samples.append(time.perf_counter() - start)
        subprocess.run([runsc, "--root", str(root), "delete", "--force", f"bench-bare-{i}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    lat = Latencies()
    lat.add_round(samples)
    return lat


def first_echoes(state: Path, count: int, *, warm_pool: int,
                 before_each: Callable[[], None] = lambda: None) -> Latencies:
    """Time `count` new sandboxes from SandboxClient.open() to the first echo's answer."""
    from agentic_sandbox import SandboxClient

    samples = []
    for _ in range(count):
        before_each()
        start = time.perf_counter()
        client = SandboxClient(TEMPLATE, backend="local", state_dir=state,
                               warm_pool=warm_pool).open()
        client.run("echo hi")
        samples.append(time.perf_counter() - start)
        client.close()
    latencies = Latencies()
    latencies.add_round(samples)
    return latencies


def _sync_and_async(holder: object, state: Path, ctx: Context) -> tuple[Latencies, Latencies]:
    """run('true') with SandboxClient (`holder`, open) and AsyncSandboxClient (a sandbox of
    its own, on one event loop), rounds alternated so both see the same machine."""
    import asyncio

    from agentic_sandbox import AsyncSandboxClient

    iterations, rounds = ctx.scale(100, 20), ctx.scale(6, 3)
    loop = asyncio.new_event_loop()
    client = AsyncSandboxClient(TEMPLATE, backend="local", state_dir=state)
    loop.run_until_complete(client.open())

    async def async_round(n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await client.run("true")
            samples.append(time.perf_counter() - start)
        return samples

    def sync_round(n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            holder.run("true")  # type: ignore[attr-defined]
            samples.append(time.perf_counter() - start)
        return samples

    sync_rt, async_rt = Latencies(), Latencies()
    try:
        loop.run_until_complete(async_round(10))
        sync_round(10)
        for i in range(rounds):
            # Which goes first alternates too: neither always follows the other.
            if i % 2:
                async_rt.add_round(loop.run_until_complete(async_round(iterations)))
                sync_rt.add_round(sync_round(iterations))
            else:
                sync_rt.add_round(sync_round(iterations))
                async_rt.add_round(loop.run_until_complete(async_round(iterations)))
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    return sync_rt, async_rt


def run(ctx: Context) -> list[Result]:
    runsc = shutil.which("runsc")
    import os
    if runsc is None or os.geteuid() != 0:
        return _skip("needs root and runsc (make system)")
    from agentic_sandbox import SandboxClient
    from agentic_sandbox._backends import local

    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    state = work / "state"
    results: list[Result] = []
    try:
        cold_n = ctx.scale(8, 3)
        # -- cold: a new sandbox from nothing to the first echo's answer --------------------
        cold = first_echoes(state, cold_n, warm_pool=0)
        bare = _bare_runsc_floor(runsc, work, cold_n)
        results.append(latency_result(
            COMPONENT, "local create -> first echo (cold)", cold,
            goal="p50 <= 500 ms", met=cold.median("p50") <= 0.5,
            floor_name="bare `runsc run /bin/true` + delete",
            ratio_to_floor=cold.median("p50") / bare.median("p50"),
            extra={"floor_p50_ms": bare.median("p50") * 1e3},
            notes="runsc run (gVisor boot) + Python start-up and imports of "
                  "sandbox-runtime, the sandbox's first process, under gVisor ptrace"))

        # -- warm: the same, with a sandbox waiting in the local warm pool -------------------
        holder = SandboxClient(TEMPLATE, backend="local", state_dir=state, warm_pool=1).open()
        pool = next(iter(local.manager(state).pools.values()))

        def wait_for_spare() -> None:
            if not pool.wait_full(120):
                raise RuntimeError("the warm pool did not fill")

        warm = first_echoes(state, ctx.scale(8, 3), warm_pool=1, before_each=wait_for_spare)

        # -- round trips on one open sandbox --------------------------------------------------
        holder.write("floor.py", FLOOR_SCRIPT.format(n=ctx.scale(200, 60)))
        floors = [float(holder.run(f"{sys.executable} -I floor.py", timeout=120).stdout)
                  for _ in range(ctx.scale(3, 2))]
        in_sandbox_ms = statistics.median(floors)
        true_rt = time_calls(lambda: holder.run("true"), iterations=ctx.scale(100, 20),
                             rounds=ctx.scale(5, 3), warmup=ctx.scale(10, 5))
        exists_rt = time_calls(lambda: holder.exists("floor.py"),
                               iterations=ctx.scale(200, 50), rounds=ctx.scale(5, 3),
                               warmup=10)
        sync_vs_async = _sync_and_async(holder, state, ctx)
        sandbox = holder.backend.sandbox  # type: ignore[attr-defined]
        exec_samples = []
        for _ in range(ctx.scale(10, 4)):
            start = time.perf_counter()
            subprocess.run(sandbox._runsc("exec", sandbox.id, "/bin/true"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            exec_samples.append(time.perf_counter() - start)
        runsc_exec_ms = statistics.median(exec_samples) * 1e3
        holder.close()

        results.append(latency_result(
            COMPONENT, "local create -> first echo (warm pool)", warm,
            goal="p50 <= 50 ms", met=warm.median("p50") <= 0.05,
            floor_name="run('true') round trip",
            ratio_to_floor=warm.median("p50") / true_rt.median("p50"),
            notes="a pre-started sandbox of the template is handed out; the pool refills in "
                  "the background"))
        results.append(latency_result(
            COMPONENT, "local run('true')", true_rt,
            goal="p50 <= 20 ms", met=true_rt.median("p50") <= 0.02,
            floor_name="in-sandbox subprocess `sh -c true`",
            ratio_to_floor=true_rt.median("p50") * 1e3 / in_sandbox_ms,
            extra={"floor_in_sandbox_ms": in_sandbox_ms, "runsc_exec_true_ms": runsc_exec_ms,
                   "exists_round_trip_p50_ms": exists_rt.median("p50") * 1e3},
            notes="HTTP over the socketpair to sandbox-runtime --stdio; exists() p50 shows "
                  "the channel itself, the rest is the runtime's /execute under gVisor"))
        sync_rt, async_rt = sync_vs_async
        ratio = async_rt.median("p50") / sync_rt.median("p50")
        results.append(latency_result(
            COMPONENT, "local async run('true')", async_rt,
            goal="p50 <= 1.10 x sync run('true')", met=ratio <= 1.10,
            floor_name="sync run('true'), same run, rounds alternated",
            ratio_to_floor=ratio,
            extra={"sync_p50_ms": sync_rt.median("p50") * 1e3,
                   "sync_p95_ms": sync_rt.median("p95") * 1e3},
            notes="AsyncSandboxClient (httpx AsyncClient over the async channel transport) "
                  "against SandboxClient, each on its own sandbox of the same template, "
                  "one round of each in turn"))
    finally:
        local.manager(state).shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return results
