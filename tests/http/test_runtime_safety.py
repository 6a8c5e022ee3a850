"""The runtime under hostile commands: timeouts kill whole trees, caps hold, bombs are contained.

Each test would fail without the safety it names: a surviving `setsid` grandchild, an
unbounded stdout, a queue instead of 429, a server that dies with its command.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from tests.http.runtime_fixtures import processes_with, runtime_server, wait_until_gone


def test_timeout_kills_setsid_and_double_forked_escapes(runtime):
    tokens = ["4242001", "4242002", "4242003", "4242004"]
    command = (
        "setsid sh -c 'sleep 4242001' & "                                   # holds the pipes
        "(setsid sh -c 'exec sleep 4242002' </dev/null >/dev/null 2>&1 &); "  # marker only
        "(env -i setsid sleep 4242003 &); "                                 # pipes only
        "sleep 4242004"
    )
    start = time.monotonic()
    out = runtime.run(command, timeout=1)
    elapsed = time.monotonic() - start
    assert out["timed_out"] is True
    assert elapsed < 10  # sanity only; the 1.5 s goal is measured in bench/bench_runtime.py
    survivors = {token: wait_until_gone(token, timeout=2) for token in tokens}
    assert survivors == {token: [] for token in tokens}


def test_timeout_answers_even_when_the_shell_exits_but_a_child_holds_stdout(runtime):
    out = runtime.run("sleep 4242011 & echo started", timeout=1)
    assert out["timed_out"] is True
    assert out["stdout"] == "started\n"
    assert wait_until_gone("4242011") == []


def test_a_command_s_background_process_ends_with_it(runtime):
    """Only POST /processes starts what may outlive its request (before: this sleep
    stayed, its keeper retired)."""
    out = runtime.run("nohup sleep 4242021 >/dev/null 2>&1 & echo ok", timeout=5)
    assert out == {**out, "stdout": "ok\n", "timed_out": False, "exit_code": 0}
    assert processes_with("4242021") == []


def test_infinite_printer_is_capped_and_flagged(runtime):
    out = runtime.run("yes", timeout=1)
    assert out["timed_out"] is True
    assert out["stdout_truncated"] is True
    assert len(out["stdout"]) == 64 * 1024
    assert wait_until_gone("yes\0") == []


def test_large_finite_output_is_truncated_but_exit_code_kept(runtime):
    out = runtime.run("head -c 1000000 /dev/zero | tr '\\0' a; echo tail >&2; exit 5")
    assert out["exit_code"] == 5
    assert out["timed_out"] is False
    assert out["stdout_truncated"] is True and out["stderr_truncated"] is False
    assert out["stdout"] == "a" * (64 * 1024)
    assert out["stderr"] == "tail\n"


def test_concurrency_bound_answers_429_at_once(runtime):
    streams = []
    try:
        for index in range(4):  # SANDBOX_RUNTIME_MAX_CONCURRENT_COMMANDS=4
            # One session each, kept open: requests.post() would close its connection early.
            session = requests.Session()
            response = session.post(f"{runtime.url}/execute/stream", stream=True, timeout=30,
                                    json={"command": f"echo go; sleep 424203{index}"})
            # Keep the line iterator alive: collecting it would release the connection.
            lines = response.iter_lines()
            assert json.loads(next(lines)) == {"stream": "stdout", "data": "go\n"}
            streams.append((session, response, lines))
        start = time.monotonic()
        busy = runtime.post("/execute", json={"command": "echo never"})
        assert busy.status_code == 429
        assert "busy" in busy.json()["error"]
        assert time.monotonic() - start < 5  # refused, not queued behind 4 sleeping commands
    finally:
        for session, response, _ in streams:
            response.close()
            session.close()
    # Closing a stream abandons its command: the server kills it and frees the slot.
    assert [wait_until_gone(f"424203{i}") for i in range(4)] == [[], [], [], []]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = runtime.post("/execute", json={"command": "echo again"})
        if response.status_code == 200:
            break
        time.sleep(0.1)
    assert response.json()["stdout"] == "again\n"


def test_commands_carry_the_configured_rlimits(runtime):
    limits = runtime.run("cat /proc/self/limits")["stdout"]
    rows = {line[:26].strip(): line[26:].split()[:2] for line in limits.splitlines()[1:]}
    assert rows["Max address space"] == [str(256 * 1024 * 1024)] * 2
    assert rows["Max file size"] == [str(2 * 1024 * 1024)] * 2
    assert rows["Max processes"] == ["128", "128"]
    assert rows["Max core file size"] == ["0", "0"]


def test_memory_bomb_fails_alone(runtime):
    out = runtime.run("python3 -c 'x = bytearray(1 << 30)'; echo rc=$?", timeout=20)
    assert "MemoryError" in out["stderr"]
    assert out["stdout"].strip() != "rc=0"
    assert runtime.alive()
    assert runtime.run("echo fine")["stdout"] == "fine\n"


def test_disk_filler_stops_at_the_file_size_limit(runtime):
    out = runtime.run("head -c 10000000 /dev/zero > filler.bin; echo rc=$?", timeout=20)
    assert out["stdout"].strip() != "rc=0"
    assert (runtime.workspace / "filler.bin").stat().st_size <= 2 * 1024 * 1024
    assert runtime.alive()
    os.unlink(runtime.workspace / "filler.bin")


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


def test_fork_bomb_is_contained_and_the_server_survives(tmp_path):
    """RLIMIT_NPROC holds a bomb when the server runs as a normal user (as in the image, uid
    1000). The kernel ignores RLIMIT_NPROC for root, so as root this test puts the server in
    a pids cgroup, the way a pod's pids limit or runsc's sandbox would.

    The bomb races its own `sleep`: when it fills the pid limit first, `sleep` cannot fork
    and the bomb may die out on its own (the command then ends with an error before its
    deadline); otherwise the deadline kills it. Either way the same things must hold: an
    answer, no process of the bomb left, a server that answers the next command."""
    cgroup = None
    env = {"SANDBOX_RUNTIME_MAX_CONCURRENT_COMMANDS": "2",
           "SANDBOX_RUNTIME_COMMAND_MAX_PROCESSES": "96"}
    if os.geteuid() == 0:
        if not os.access(PIDS_CGROUP, os.W_OK):
            pytest.skip("running as root (RLIMIT_NPROC not enforced) and no writable pids "
                        "cgroup to contain a fork bomb")
        cgroup = PIDS_CGROUP / f"sandbox-runtime-test-{os.getpid()}"
        cgroup.mkdir()
        (cgroup / "pids.max").write_text("200\n")
        env["SANDBOX_RUNTIME_TEST_CGROUP"] = str(cgroup)
    try:
        with runtime_server(tmp_path, env=env, cgroup=cgroup) as server:
            out = server.run("b() { b | b & }; b; sleep 4242051", timeout=3)
            # Killed at the deadline, or ended with an error: never a clean success.
            assert out["timed_out"] or out["exit_code"] != 0, out
            # Every process of the bomb is a fork of the command's shell (its argv carries
            # the marker); none may be left, whichever way the command ended.
            assert wait_until_gone("4242051", timeout=0) == []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                response = server.post("/execute", json={"command": "echo alive"})
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text  # pid limit still full
                time.sleep(0.2)
            assert response.json()["stdout"] == "alive\n"
            assert server.alive()
    finally:
        if cgroup is not None:
            for _ in range(50):
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
