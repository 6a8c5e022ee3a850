"""Idle local sandboxes (issue 17, local part) on real runsc: after the idle timeout with no
request the sandbox is paused (`runsc state` says so), the next call resumes it and is
answered with the workspace intact, concurrent calls share one resume (in this process and
through a named sandbox's holder, from other processes), an active sandbox is never paused,
and a paused sandbox is removed with nothing left behind. Stage 2: a sandbox left paused is
stopped (no runsc container or process left, its workspace kept), the next call starts it
again with its files (one start for concurrent calls, through a holder too), and a stopped
sandbox is removed with nothing left behind.

Waits are on observable state (runsc's own status, the sandbox's counters, the holder's log)
with generous deadlines, so they hold on a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentic_sandbox import AsyncSandboxClient, SandboxClient
from agentic_sandbox._backends.local.idle import STOP_FACTOR, STOPPED
from tests.dataplane.conftest import TEMPLATE, containers
from tests.dataplane.test_cli_local import cli, leftovers

IDLE = 2  # seconds: the schema's minimum
DEADLINE = 60.0


def runsc_status(state_dir: Path, sandbox_id: str) -> str:
    """runsc's own word on the container: "running", "paused", ... ("" when it is gone)."""
    runsc = os.environ.get("AGENTIC_SANDBOX_RUNSC") or shutil.which("runsc") or "runsc"
    out = subprocess.run([runsc, "--root", str(state_dir / "runsc"), "state", sandbox_id],
                         capture_output=True, text=True, timeout=30, check=False)
    return str(json.loads(out.stdout)["status"]) if out.returncode == 0 else ""


def wait_for(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:.0f} s: {what}")
        time.sleep(0.1)


def _together(calls: int, call: Callable[[int], str]) -> list[str]:
    """`calls` calls from as many threads, released at once; their answers."""
    barrier = threading.Barrier(calls)
    answers: list[str] = []

    def one(i: int) -> None:
        barrier.wait()
        answers.append(call(i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    return answers


def paused(state_dir: Path, client: SandboxClient | AsyncSandboxClient) -> bool:
    return runsc_status(state_dir, client.sandbox_name) == "paused"


def test_an_idle_sandbox_is_paused_and_run_resumes_it_with_its_files(open_sandbox, state_dir):
    sandbox = open_sandbox(idle_timeout=IDLE)
    sandbox.write("kept.txt", "still here\n")
    server = sandbox.start("sleep 600")
    wait_for(lambda: paused(state_dir, sandbox), "the idle sandbox is paused")
    result = sandbox.run("cat kept.txt")
    assert (result.exit_code, result.stdout) == (0, "still here\n")
    assert runsc_status(state_dir, sandbox.sandbox_name) == "running"
    assert sandbox.backend.sandbox.activity.resumes == 1
    # A pause keeps processes (and memory): the background process runs on.
    assert server.info().running


def test_the_async_client_resumes_a_paused_sandbox_once_for_concurrent_calls(state_dir):
    async def main() -> tuple[list[str], int]:
        async with AsyncSandboxClient(TEMPLATE, backend="local", state_dir=state_dir,
                                      idle_timeout=IDLE) as sandbox:
            await sandbox.write("f.txt", "async")
            await asyncio.to_thread(wait_for, lambda: paused(state_dir, sandbox),
                                    "the idle sandbox is paused")
            answers = await asyncio.gather(*(sandbox.read("f.txt") for _ in range(6)))
            return [a.decode() for a in answers], sandbox.backend.sandbox.activity.resumes
    assert asyncio.run(main()) == (["async"] * 6, 1)


def test_the_template_idle_timeout_applies_and_idle_timeout_overrides_it(tmp_path, state_dir):
    def template(name: str, idle: str) -> None:
        (tmp_path / f"{name}.yaml").write_text(f"""\
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata: {{name: {name}}}
spec:
  idleTimeout: {idle}
  podTemplate:
    spec:
      containers: [{{name: runtime, image: unused}}]
""")

    template("sleepy", f"{IDLE}s")
    template("wakeful", "1h")
    with SandboxClient("sleepy", backend="local", state_dir=state_dir,
                       templates_dir=tmp_path) as by_template, \
            SandboxClient("wakeful", backend="local", state_dir=state_dir,
                          templates_dir=tmp_path, idle_timeout=f"{IDLE}s") as by_option:
        wait_for(lambda: paused(state_dir, by_template), "paused by the template's timeout")
        wait_for(lambda: paused(state_dir, by_option), "paused by the client's override")
        assert by_template.run("echo awake").stdout == "awake\n"
        assert by_option.run("echo awake").stdout == "awake\n"


def test_concurrent_calls_during_a_resume_share_one_resume(open_sandbox, state_dir):
    sandbox = open_sandbox(idle_timeout=IDLE)
    sandbox.write("f.txt", "x")
    wait_for(lambda: paused(state_dir, sandbox), "the idle sandbox is paused")
    answers = _together(8, lambda i: sandbox.run("cat f.txt").stdout if i % 2
                        else sandbox.read("f.txt").decode())
    assert answers == ["x"] * 8
    assert sandbox.backend.sandbox.activity.resumes == 1


def test_an_active_sandbox_is_never_paused(open_sandbox, state_dir):
    sandbox = open_sandbox(idle_timeout=IDLE)
    end = time.monotonic() + 3.5 * IDLE
    while time.monotonic() < end:  # a request every half timeout
        assert sandbox.run("true").exit_code == 0
        time.sleep(IDLE / 4)
    # A command that runs longer than the timeout is a request under way: not idle.
    assert sandbox.run(f"sleep {2 * IDLE}").exit_code == 0
    assert sandbox.backend.sandbox.activity.pauses == 0
    assert runsc_status(state_dir, sandbox.sandbox_name) == "running"


def _processes_naming(word: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if word in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def test_a_paused_sandbox_is_deleted_with_nothing_left_behind(state_dir):
    client = SandboxClient(TEMPLATE, backend="local", state_dir=state_dir, idle_timeout=IDLE)
    with client:
        sandbox_id = client.sandbox_name
        workspace = client.backend.sandbox.workspace
        client.write("f.txt", "x")
        wait_for(lambda: paused(state_dir, client), "the idle sandbox is paused")
        assert _processes_naming(sandbox_id)  # runsc's processes, frozen but there
        started = time.monotonic()
    took = time.monotonic() - started
    assert sandbox_id not in containers(state_dir)
    assert str(workspace) not in Path("/proc/mounts").read_text()
    assert not workspace.exists()
    assert _processes_naming(sandbox_id) == []
    assert took < 20, f"removing a paused sandbox took {took:.1f} s"


@pytest.fixture
def cli_state(tmp_path_factory: pytest.TempPathFactory, runsc_ok: None):
    path = tmp_path_factory.mktemp("idle-cli-state")
    yield path
    if (path / "named" / "box").exists():
        cli(path, "delete", "box")
    assert leftovers(path) == []


def test_a_named_sandbox_resumes_once_for_concurrent_calls_through_its_holder(cli_state):
    created = cli(cli_state, "create", "box", "--idle-timeout", f"{IDLE}s")
    assert created.returncode == 0, created.stderr
    assert cli(cli_state, "exec", "box", "--", "sh -c 'echo kept > f.txt'").returncode == 0
    record = json.loads((cli_state / "named" / "box" / "holder.json").read_text())
    wait_for(lambda: runsc_status(cli_state, record["sandbox"]) == "paused",
             "the named sandbox is paused by its holder")
    # Other processes than the holder: this one, with calls that start together.
    with SandboxClient(TEMPLATE, backend="local", state_dir=cli_state, attach="box") as held:
        assert _together(8, lambda i: held.run("cat f.txt").stdout) == ["kept\n"] * 8
    log = (cli_state / "named" / "box.log").read_text()
    assert log.count("(resume ") == 1, log  # one `runsc resume` run, and it worked
    assert "resumed local sandbox" in log
    assert cli(cli_state, "delete", "box").returncode == 0


def test_a_paused_named_sandbox_whose_holder_was_killed_is_cleaned_up(cli_state):
    assert cli(cli_state, "create", "box", "--idle-timeout", f"{IDLE}s").returncode == 0
    record = json.loads((cli_state / "named" / "box" / "holder.json").read_text())
    wait_for(lambda: runsc_status(cli_state, record["sandbox"]) == "paused",
             "the named sandbox is paused by its holder")
    os.kill(record["pid"], signal.SIGKILL)
    deleted = cli(cli_state, "delete", "box")  # the stale clean-up removes the paused one
    assert deleted.returncode == 0, deleted.stderr
    assert leftovers(cli_state) == []
    assert _processes_naming(record["sandbox"]) == []


# Stage 2: idle for STOP_FACTOR idle timeouts, the paused sandbox is stopped (workspace kept).
STOP_WAIT = DEADLINE + STOP_FACTOR * IDLE


def stopped(client: SandboxClient) -> bool:
    return client.backend.sandbox.activity.state == STOPPED


def test_a_long_paused_sandbox_is_stopped_and_run_starts_it_again_with_its_files(
        open_sandbox, state_dir):
    sandbox = open_sandbox(idle_timeout=IDLE)
    local = sandbox.backend.sandbox
    sandbox.write("kept.txt", "still here\n")
    assert sandbox.run("echo gone > /tmp/t.txt").exit_code == 0
    sandbox.start("sleep 600")
    wait_for(lambda: paused(state_dir, sandbox), "the idle sandbox is paused")
    wait_for(lambda: stopped(sandbox), "the long-paused sandbox is stopped", STOP_WAIT)
    # Nothing of the gVisor sandbox is left (its memory went with it); its disk is kept.
    assert runsc_status(state_dir, sandbox.sandbox_name) == ""
    assert _processes_naming(sandbox.sandbox_name) == []
    assert str(local.workspace) in Path("/proc/mounts").read_text()
    if local.workspace_kind == "ext4 image":
        assert (local.dir / "workspace.img").is_file()
    result = sandbox.run("cat kept.txt")
    assert (result.exit_code, result.stdout) == (0, "still here\n")
    assert runsc_status(state_dir, sandbox.sandbox_name) == "running"
    assert (local.activity.starts, local.activity.resumes) == (1, 0)
    # A fresh sandbox: background processes did not survive the stop.
    assert sandbox.run("pgrep -x sleep").exit_code == 1
    assert sandbox.run("test -e /tmp/t.txt").exit_code == 1  # /tmp: memory inside gVisor
    sandbox.write("more.txt", "and more")  # the workspace is writable as before
    assert sandbox.read("more.txt") == b"and more"


def test_concurrent_calls_to_a_stopped_sandbox_share_one_start(open_sandbox):
    sandbox = open_sandbox(idle_timeout=IDLE)
    sandbox.write("f.txt", "x")
    wait_for(lambda: stopped(sandbox), "the idle sandbox is stopped", STOP_WAIT)
    answers = _together(8, lambda i: sandbox.run("cat f.txt").stdout if i % 2
                        else sandbox.read("f.txt").decode())
    assert answers == ["x"] * 8
    assert sandbox.backend.sandbox.activity.starts == 1


def test_a_stopped_sandbox_is_deleted_with_nothing_left_behind(state_dir):
    client = SandboxClient(TEMPLATE, backend="local", state_dir=state_dir, idle_timeout=IDLE)
    with client:
        sandbox_id = client.sandbox_name
        local = client.backend.sandbox
        client.write("f.txt", "x")
        wait_for(lambda: stopped(client), "the idle sandbox is stopped", STOP_WAIT)
        assert local.dir.is_dir() and local.workspace.is_dir()
    assert sandbox_id not in containers(state_dir)
    assert str(local.workspace) not in Path("/proc/mounts").read_text()
    assert not local.workspace.exists() and not local.dir.exists()
    assert _processes_naming(sandbox_id) == []
    assert local.activity.starts == 0  # removed without being started again


def test_a_stopped_named_sandbox_starts_once_for_concurrent_calls_through_its_holder(
        cli_state):
    created = cli(cli_state, "create", "box", "--idle-timeout", f"{IDLE}s")
    assert created.returncode == 0, created.stderr
    assert cli(cli_state, "exec", "box", "--", "sh -c 'echo kept > f.txt'").returncode == 0
    record = json.loads((cli_state / "named" / "box" / "holder.json").read_text())
    log_file = cli_state / "named" / "box.log"
    wait_for(lambda: "stopped local sandbox" in log_file.read_text(),
             "the named sandbox is stopped by its holder", STOP_WAIT)
    assert runsc_status(cli_state, record["sandbox"]) == ""
    with SandboxClient(TEMPLATE, backend="local", state_dir=cli_state, attach="box") as held:
        assert _together(8, lambda i: held.run("cat f.txt").stdout) == ["kept\n"] * 8
    log = log_file.read_text()
    assert log.count("(start ") == 1, log  # one start of the stopped sandbox, and it worked
    assert "started the stopped local sandbox" in log
    assert runsc_status(cli_state, record["sandbox"]) == "running"
    assert cli(cli_state, "delete", "box").returncode == 0
    assert leftovers(cli_state) == []
