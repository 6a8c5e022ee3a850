"""Lifecycle of local sandboxes: removal on exit and at interpreter exit, stale cleanup after
a crash, the warm pool, clear errors, and the walkthrough script itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agentic_sandbox import BackendUnavailableError, SandboxClient, TemplateNotFoundError
from agentic_sandbox._backends import local
from agentic_sandbox._backends.local.owner import process_state
from testbed.support import REPO
from tests.dataplane.conftest import TEMPLATE, containers


def python(code: str, state_dir, **kwargs) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENTIC_SANDBOX_STATE_DIR": str(state_dir),
           "AGENTIC_SANDBOX_BACKEND": "local"}
    env.pop("KUBECONFIG", None)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, **kwargs)


def test_exit_removes_container_bundle_and_workspace(state_dir):
    with SandboxClient(TEMPLATE, backend="local", state_dir=state_dir) as sandbox:
        sandbox_id = sandbox.sandbox_name
        workspace = sandbox.backend.sandbox.workspace
        assert sandbox_id in containers(state_dir)
        assert workspace.is_dir()
    assert sandbox_id not in containers(state_dir)
    assert not workspace.exists()
    assert not (state_dir / "sandboxes" / sandbox_id).exists()


def test_interpreter_exit_removes_sandboxes_left_open(tmp_path):
    proc = python(f"""
        from agentic_sandbox import SandboxClient
        client = SandboxClient({TEMPLATE!r}).open()   # never closed: atexit must do it
        print(client.sandbox_name, flush=True)
    """, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip().startswith("agentsbx-")
    assert containers(tmp_path) == []
    assert list((tmp_path / "workspaces").iterdir()) == []


def test_stale_sandboxes_of_a_crashed_process_are_cleaned(tmp_path):
    proc = python(f"""
        import os, time
        from agentic_sandbox import SandboxClient
        client = SandboxClient({TEMPLATE!r}).open()
        client.write("left.txt", "behind")
        print(client.sandbox_name, flush=True)
        time.sleep(600)
    """, tmp_path, start_new_session=True)
    assert proc.stdout is not None
    sandbox_id = proc.stdout.readline().strip()
    assert sandbox_id.startswith("agentsbx-"), proc.stderr.read() if proc.stderr else ""
    # A crash: no atexit, no cleanup; the whole process group dies at once.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(0.5)
    assert (tmp_path / "workspaces" / sandbox_id / "left.txt").exists()
    runsc = local.runsc_binary()
    removed = local.clean_stale(tmp_path, runsc)
    assert sandbox_id in removed
    assert sandbox_id not in containers(tmp_path)
    assert not (tmp_path / "workspaces" / sandbox_id).exists()
    assert not (tmp_path / "sandboxes" / sandbox_id).exists()


def test_a_sandbox_whose_owner_is_a_zombie_is_stale(tmp_path):
    """An owner that has exited but is not reaped yet (its parent has not waited for it)
    still has its /proc entry with the same start time: it must count as gone."""
    proc = python(f"""
        import os
        from agentic_sandbox import SandboxClient
        client = SandboxClient({TEMPLATE!r}).open()
        print(client.sandbox_name, flush=True)
        os._exit(0)  # no atexit, no cleanup; a zombie until this test reaps it
    """, tmp_path, start_new_session=True)
    assert proc.stdout is not None
    sandbox_id = proc.stdout.readline().strip()
    assert sandbox_id.startswith("agentsbx-"), proc.stderr.read() if proc.stderr else ""
    try:
        deadline = time.monotonic() + 30
        while process_state(proc.pid)[0] != "Z":  # type: ignore[index]
            assert time.monotonic() < deadline, "the owner did not exit"
            time.sleep(0.05)
        assert sandbox_id in containers(tmp_path)
        removed = local.clean_stale(tmp_path, local.runsc_binary())
    finally:
        proc.wait(30)
    assert sandbox_id in removed
    assert sandbox_id not in containers(tmp_path)
    assert not (tmp_path / "workspaces" / sandbox_id).exists()
    assert not (tmp_path / "sandboxes" / sandbox_id).exists()


def test_stale_cleanup_spares_live_owners(state_dir):
    with SandboxClient(TEMPLATE, backend="local", state_dir=state_dir) as sandbox:
        removed = local.clean_stale(state_dir, local.runsc_binary())
        assert sandbox.sandbox_name not in removed
        assert sandbox.run("echo alive").stdout == "alive\n"


def test_warm_pool_hands_out_a_ready_sandbox_and_refills(tmp_path):
    first = SandboxClient(TEMPLATE, backend="local", state_dir=tmp_path, warm_pool=1).open()
    try:
        pool = next(iter(local.manager(tmp_path).pools.values()))
        assert pool.wait_full(120)
        pooled_id = pool.ready[0].id
        start = time.monotonic()
        with SandboxClient(TEMPLATE, backend="local", state_dir=tmp_path,
                           warm_pool=1) as second:
            took = time.monotonic() - start
            assert second.sandbox_name == pooled_id
            assert second.run("echo warm").stdout == "warm\n"
            assert took < 5  # sanity bound only; bench/bench_client.py measures it
            assert pool.wait_full(120)
            assert pool.ready[0].id not in (pooled_id, first.sandbox_name)
    finally:
        first.close()
        local.manager(tmp_path).shutdown()
    assert containers(tmp_path) == []


def test_unknown_template_is_template_not_found(state_dir):
    with pytest.raises(TemplateNotFoundError, match="no-such-template"), \
            SandboxClient("no-such-template", backend="local", state_dir=state_dir):
        pass


def test_missing_runsc_is_backend_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTIC_SANDBOX_RUNSC", str(tmp_path / "no-runsc"))
    with pytest.raises(BackendUnavailableError, match="apt-get install runsc"), \
            SandboxClient(TEMPLATE, backend="local", state_dir=tmp_path / "s"):
        pass


def test_broken_runsc_is_backend_unavailable_not_a_fallback(tmp_path, monkeypatch):
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'gVisor cannot start here' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("AGENTIC_SANDBOX_RUNSC", str(fake))
    with pytest.raises(BackendUnavailableError, match="cannot start here"), \
            SandboxClient(TEMPLATE, backend="local", state_dir=tmp_path / "s"):
        pass


def test_walkthrough_script_prints_the_hello_line(tmp_path):
    env = {**os.environ, "AGENTIC_SANDBOX_STATE_DIR": str(tmp_path),
           "AGENTIC_SANDBOX_BACKEND": "local"}
    env.pop("KUBECONFIG", None)
    result = subprocess.run([sys.executable, str(REPO / "examples" / "walkthrough.py")],
                            env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Hello from the sandboxed environment!"
    assert containers(tmp_path) == []
