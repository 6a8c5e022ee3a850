"""Idle local sandboxes (issue 17, local part): resume of a paused sandbox to its first answer,
and the options it was chosen from, measured in the same run on this machine's runsc.

`python -m bench idle_local [--quick]` (the Kubernetes wake is `bench idle`). Each sample of
the chosen design: a SandboxClient with `idle_timeout=2` is left alone until the idle watcher
has paused it (`runsc pause`), then `run("true")`: the time is from the call to its whole
(small) answer, which includes `runsc resume`. Floor: the same call on a running sandbox.

Stage 2, a wake from stopped: sandboxes (idle_timeout=2) left alone until the watcher has
stopped them (10 idle timeouts: the gVisor sandbox ended, workspace kept), then, one after the
other, `run("cat f.txt")` of a file written before: the time includes the fresh `runsc run`
on the kept bundle and the new runtime's start. Reference: the Kubernetes wake without a warm
pool, <= 1 s (not a goal here).

The options not chosen, on one sandbox each sample (raw runsc, the backend's own bundle and
flags), also to the answer of one `cat` of a workspace file written before:
- checkpoint/restore: `runsc checkpoint` (the first runtime's channel left open), `runsc
  restore` on a new socketpair, which the restored runtime serves;
- a fresh sandbox on the kept workspace: `runsc run` of the same bundle (workspace mounted).
Resources: the sandbox cgroup's CPU time per second and memory while idle running and
paused, the same CPU with a busy background process (what a pause gives back), and the
checkpoint image's size (a checkpointed sandbox holds no memory).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx2

from agentic_sandbox import SandboxClient
from agentic_sandbox._backends import local
from agentic_sandbox._backends.base import request_once
from agentic_sandbox._backends.channel import CHANNEL_URL, ChannelTransport
from agentic_sandbox._backends.local.idle import STOP_FACTOR, STOPPED, Activity
from agentic_sandbox._backends.local.runsc import runsc_argv
from agentic_sandbox._backends.local.sandbox import LocalSandbox
from agentic_sandbox._exceptions import BackendUnavailableError
from agentic_sandbox._templates import load_template, template_dirs
from bench.harness import Context, Latencies, Result, Skipped, latency_result

TEMPLATE = "python-runtime-template"
IDLE_S = 2
GOAL_MS = 150.0
STOPPED_REFERENCE_MS = 1000.0  # issue 17's Kubernetes wake without a warm pool
LIMIT = httpx2.Timeout(120.0)


def wait(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout:.0f} s")
        time.sleep(0.02)


def cgroup(sandbox_id: str, controller: str, name: str) -> int:
    return int(Path(f"/sys/fs/cgroup/{controller}/agent-sandbox/{sandbox_id}/{name}")
               .read_text())


def cpu_ms_per_s(sandbox_id: str, seconds: float = 3.0) -> float:
    before = cgroup(sandbox_id, "cpuacct", "cpuacct.usage")
    time.sleep(seconds)
    return (cgroup(sandbox_id, "cpuacct", "cpuacct.usage") - before) / 1e6 / seconds


def chosen(ctx: Context, state: Path) -> tuple[Latencies, Latencies, dict[str, float]]:
    """Resume of a paused sandbox through the client, and the same call on a running one."""
    samples, rounds = ctx.scale(8, 5), ctx.scale(3, 1)
    resumed, running = Latencies(), Latencies()
    resources: dict[str, float] = {}
    with SandboxClient(TEMPLATE, backend="local", state_dir=state, warm_pool=0,
                       idle_timeout=IDLE_S) as sandbox:
        activity = sandbox.backend.sandbox.activity  # type: ignore[attr-defined]
        sandbox.run("true")
        if cgroup_ok(sandbox.sandbox_name):
            time.sleep(1.0)  # past the runtime's own after-start work
            resources["cpu_ms_per_s_idle_running"] = cpu_ms_per_s(sandbox.sandbox_name)
            resources["memory_mib_running"] = cgroup(sandbox.sandbox_name, "memory",
                                                     "memory.usage_in_bytes") / 2**20
        for _ in range(rounds):
            paused_round, running_round = [], []
            for _ in range(samples):
                wait(lambda: activity.paused)
                start = time.perf_counter()
                sandbox.run("true")
                paused_round.append(time.perf_counter() - start)
                start = time.perf_counter()
                sandbox.run("true")
                running_round.append(time.perf_counter() - start)
            resumed.add_round(paused_round)
            running.add_round(running_round)
        if cgroup_ok(sandbox.sandbox_name):
            wait(lambda: activity.paused)
            time.sleep(1.0)  # past the pause itself
            resources["cpu_ms_per_s_paused"] = cpu_ms_per_s(sandbox.sandbox_name)
            resources["memory_mib_paused"] = cgroup(sandbox.sandbox_name, "memory",
                                                    "memory.usage_in_bytes") / 2**20
            # What a pause gives back: the CPU of whatever runs on with no request.
            sandbox.start("while :; do :; done")
            resources["cpu_ms_per_s_busy_background_running"] = cpu_ms_per_s(
                sandbox.sandbox_name, 2.0)
            wait(lambda: activity.paused)
            time.sleep(1.0)
            resources["cpu_ms_per_s_busy_background_paused"] = cpu_ms_per_s(
                sandbox.sandbox_name, 2.0)
    return resumed, running, resources


def in_state(activity: Activity, state: str) -> bool:
    return activity.state == state


def woken_from_stopped(ctx: Context, state: Path) -> Latencies:
    """A wake of a stopped sandbox through the client, to the answer of a `cat` of a file
    written before it was stopped; the sandboxes of a round are stopped together."""
    woken = Latencies()
    for _ in range(ctx.scale(2, 1)):
        clients = [SandboxClient(TEMPLATE, backend="local", state_dir=state, warm_pool=0,
                                 idle_timeout=IDLE_S) for _ in range(ctx.scale(4, 3))]
        try:
            for client in clients:
                client.open()
                client.write("f.txt", "kept")
            times = []
            for client in clients:
                activity = client.backend.sandbox.activity  # type: ignore[attr-defined]
                wait(partial(in_state, activity, STOPPED), 60.0 + STOP_FACTOR * IDLE_S)
                start = time.perf_counter()
                answer = client.run("cat f.txt").stdout
                times.append(time.perf_counter() - start)
                if answer != "kept" or activity.starts != 1:
                    raise RuntimeError(f"wake from stopped: {answer!r}, {activity.starts} starts")
            woken.add_round(times)
        finally:
            for client in clients:
                client.close()
    return woken


def cgroup_ok(sandbox_id: str) -> bool:
    return Path(f"/sys/fs/cgroup/cpuacct/agent-sandbox/{sandbox_id}").is_dir()


def _flags(manager: local.Manager) -> list[str]:
    return [f"--platform={manager.platform}", "--network=none",
            *([] if manager.cgroups else ["--ignore-cgroups"])]


def _serve(sandbox: LocalSandbox, manager: local.Manager, *command: str) -> float:
    """Start `runsc <command>` on the sandbox's bundle with a new channel as the first
    process's stdio; the seconds to the answer of `cat f` over it. Removes it after."""
    ours, theirs = socket.socketpair()
    start = time.perf_counter()
    proc = subprocess.Popen(runsc_argv(manager.runsc, manager.state_dir, *_flags(manager),
                                       *command, "--bundle", str(sandbox.dir), sandbox.id),
                            stdin=theirs.fileno(), stdout=theirs.fileno(),
                            stderr=subprocess.DEVNULL, start_new_session=True)
    theirs.close()
    transport = ChannelTransport(lambda: ours, owns_channels=False)
    try:
        answer = request_once(transport, "POST", CHANNEL_URL + "/execute",
                              json={"command": "cat f"}, timeout=LIMIT)
        took = time.perf_counter() - start
        if answer.json().get("stdout") != "kept\n":
            raise RuntimeError(f"{command[0]}: the workspace file is not there: {answer.text}")
    finally:
        transport.close()
        ours.close()
        subprocess.run(runsc_argv(manager.runsc, manager.state_dir, "kill", sandbox.id, "KILL"),
                       capture_output=True, check=False, timeout=60)
        proc.wait(60)
        subprocess.run(runsc_argv(manager.runsc, manager.state_dir, "delete", "--force",
                                  sandbox.id), capture_output=True, check=False, timeout=60)
    return took


def options(ctx: Context, state: Path) -> tuple[Latencies, Latencies, dict[str, float]]:
    """Checkpoint/restore and a fresh sandbox on the kept workspace (see the docstring)."""
    manager = local.manager(state)
    template = load_template(TEMPLATE, template_dirs(None))
    samples, rounds = ctx.scale(5, 3), ctx.scale(2, 1)
    restored, fresh = Latencies(), Latencies()
    images: list[float] = []
    runsc = manager.runsc
    for _ in range(rounds):
        restore_round, fresh_round = [], []
        for _ in range(samples):
            sandbox = manager.start_sandbox(template, 120.0, warm_up=True)
            try:
                request_once(sandbox.transport, "POST", CHANNEL_URL + "/execute",
                             json={"command": "echo kept > f"}, timeout=LIMIT)
                image = sandbox.dir / "checkpoint"
                image.mkdir()
                # The first runtime's channel stays open in the transport's pool: restored,
                # the runtime reads the new stdin restore gives it.
                done = subprocess.run(runsc_argv(runsc, state, "checkpoint", "--image-path",
                                                 str(image), sandbox.id),
                                      capture_output=True, text=True, check=False, timeout=120)
                if done.returncode != 0:
                    raise RuntimeError(f"runsc checkpoint: {done.stderr[-500:]}")
                assert sandbox._run is not None
                sandbox._run.wait(60)
                images.append(sum(p.stat().st_size for p in image.iterdir()) / 2**20)
                subprocess.run(runsc_argv(runsc, state, "delete", "--force", sandbox.id),
                               capture_output=True, check=False, timeout=60)
                sandbox.transport.close()
                restore_round.append(_serve(sandbox, manager, "restore", "--image-path",
                                            str(image)))
                fresh_round.append(_serve(sandbox, manager, "run"))
            finally:
                manager.release(sandbox)
        restored.add_round(restore_round)
        fresh.add_round(fresh_round)
    return restored, fresh, {"checkpoint_image_mib": statistics.median(images)}


def run(ctx: Context) -> list[Result]:
    try:
        local.runsc_binary()
    except BackendUnavailableError as exc:
        raise Skipped(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="bench-idle-local-") as tmp:
        state = Path(tmp)
        try:
            resumed, running, resources = chosen(ctx, state)
            woken = woken_from_stopped(ctx, state)
            restored, fresh, image = options(ctx, state)
        finally:
            local.manager(state).shutdown()
    resources |= image
    figures = {k: round(v, 1) for k, v in resources.items()}
    p50 = resumed.median("p50") * 1e3
    load = os.getloadavg()[0]
    return [
        latency_result(
            "idle_local", "local resume -> first answer (runsc pause/resume, chosen)", resumed,
            goal=f"p50 <= {GOAL_MS:.0f} ms", met=p50 <= GOAL_MS,
            floor_name="same call, sandbox running",
            ratio_to_floor=resumed.median("p50") / running.median("p50"),
            extra={"resources": figures},
            notes=f"run('true') on a sandbox paused by its 2 s idle timeout, `runsc resume` "
                  f"included; idle sandbox CPU/memory: {json.dumps(figures)}; load "
                  f"{load:.1f} at the end"),
        latency_result(
            "idle_local", "local wake from stopped -> first answer", woken,
            goal=f"reference: Kubernetes cold wake p50 <= {STOPPED_REFERENCE_MS:.0f} ms",
            met=woken.median("p50") * 1e3 <= STOPPED_REFERENCE_MS,
            notes="run('cat f.txt') on a sandbox stopped after 10 idle timeouts of 2 s "
                  "(gVisor sandbox ended, workspace kept): a fresh `runsc run` on the kept "
                  "bundle and workspace, the new runtime's start, the answer"),
        latency_result(
            "idle_local", "local resume -> first answer (checkpoint/restore, not chosen)",
            restored, goal=f"p50 <= {GOAL_MS:.0f} ms", met=restored.median("p50") * 1e3
            <= GOAL_MS,
            notes="runsc restore of a checkpoint (memory freed while checkpointed; image "
                  f"{figures['checkpoint_image_mib']} MiB) to the restored runtime's answer"),
        latency_result(
            "idle_local", "local resume -> first answer (fresh sandbox, kept workspace, "
            "not chosen)", fresh, goal=f"p50 <= {GOAL_MS:.0f} ms",
            met=fresh.median("p50") * 1e3 <= GOAL_MS,
            notes="runsc run of the same bundle on the kept workspace to the new runtime's "
                  "answer (processes and memory lost)"),
    ]
