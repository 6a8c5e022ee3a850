"""Several gunicorn workers behave as one server: one command bound, one set of metrics.

The server runs one worker per CPU; these tests force two (SANDBOX_RUNTIME_WORKERS=2) and
find keep-alive connections that landed on each worker (a command's parent is one of its
worker's keepers, whose parent is the worker), so each property is checked across
processes, not by luck of connection placement.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from tests.http.runtime_fixtures import runtime_server, wait_until_gone

MAX_COMMANDS = 3


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    env = {"SANDBOX_RUNTIME_WORKERS": "2",
           "SANDBOX_RUNTIME_MAX_CONCURRENT_COMMANDS": str(MAX_COMMANDS)}
    with runtime_server(tmp_path_factory.mktemp("workers"), env=env) as server:
        yield server


# The worker serving a command: its keeper's parent. $PPID alone is the keeper, and a worker
# may run several keepers: grouping by it could put one worker's connections in two groups.
WORKER_PID = "sed -n 's/^PPid:[[:space:]]*//p' /proc/$PPID/status"


def sessions_by_worker(server, wanted: int = 2) -> dict[int, list[requests.Session]]:
    """Keep-alive sessions grouped by the worker that serves them, `wanted` per worker."""
    found: dict[int, list[requests.Session]] = {}
    for _ in range(60):
        session = requests.Session()
        out = session.post(f"{server.url}/execute", json={"command": WORKER_PID},
                           timeout=30).json()
        found.setdefault(int(out["stdout"]), []).append(session)
        if len(found) >= 2 and all(len(v) >= wanted for v in list(found.values())[:2]):
            return found
    counts = {pid: len(group) for pid, group in found.items()}
    pytest.skip(f"60 connections did not reach two workers ({counts})")


def start_stream(session: requests.Session, url: str, token: str):
    response = session.post(f"{url}/execute/stream", stream=True, timeout=30,
                            json={"command": f"echo go; sleep {token}"})
    lines = response.iter_lines()
    assert json.loads(next(lines)) == {"stream": "stdout", "data": "go\n"}
    return response, lines


def test_the_command_bound_is_global_across_workers(two_workers):
    groups = sessions_by_worker(two_workers)
    (first, a_sessions), (second, b_sessions) = list(groups.items())[:2]
    assert first != second
    held = []
    try:
        # MAX_COMMANDS running: two on one worker, one on the other.
        held.append(start_stream(a_sessions[0], two_workers.url, "4242101"))
        held.append(start_stream(a_sessions[1], two_workers.url, "4242102"))
        held.append(start_stream(b_sessions[0], two_workers.url, "4242103"))
        # Each worker alone holds fewer than MAX_COMMANDS, yet both refuse the next one.
        for session in (b_sessions[1], a_sessions[-1]):
            response = session.post(f"{two_workers.url}/execute", json={"command": "true"},
                                    timeout=30)
            assert response.status_code == 429, response.text
    finally:
        for response, _ in held:
            response.close()
    assert [wait_until_gone(f"424210{i}") for i in (1, 2, 3)] == [[], [], []]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = b_sessions[1].post(f"{two_workers.url}/execute",
                                      json={"command": "echo free"}, timeout=30)
        if response.status_code == 200:
            break
        time.sleep(0.1)
    assert response.json()["stdout"] == "free\n"


def test_metrics_count_commands_of_every_worker(two_workers):
    def total() -> float:
        text = requests.get(f"{two_workers.url}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith('sandbox_runtime_commands_total{outcome="exit"}'):
                return float(line.split()[-1])
        return 0.0

    groups = sessions_by_worker(two_workers, wanted=1)
    # Commands abandoned by an earlier test are counted when their streams close; wait
    # until the count holds still.
    before, deadline = -1.0, time.monotonic() + 10
    while time.monotonic() < deadline:
        now = total()
        if now == before:
            break
        before = now
        time.sleep(0.5)
    for sessions in list(groups.values())[:2]:
        for _ in range(3):
            sessions[0].post(f"{two_workers.url}/execute", json={"command": "true"}, timeout=30)
    # 6 of ours, plus the probes sessions_by_worker ran: all visible from any worker.
    assert total() - before == 6
    assert "sandbox_runtime_commands_running 0.0" in requests.get(
        f"{two_workers.url}/metrics", timeout=30).text


def worker_cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def exited(pid: int) -> bool:
    """Whether `pid` has ended with all its threads. A worker's threads share its descriptor
    table, which (and with it the record locks) goes only when the last thread has exited:
    its main thread shows as a zombie while others may still be on their way out."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X") and os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except FileNotFoundError:
        return True


def test_a_killed_worker_frees_its_slots(two_workers):
    groups = sessions_by_worker(two_workers, wanted=MAX_COMMANDS)
    victim, sessions = next(iter(groups.items()))
    held = [start_stream(s, two_workers.url, f"424212{i}")
            for i, s in enumerate(sessions[:MAX_COMMANDS])]
    try:
        other = next(s for pid, group in groups.items() if pid != victim for s in group)
        busy = other.post(f"{two_workers.url}/execute", json={"command": "true"}, timeout=30)
        assert busy.status_code == 429
        assert "sandbox-runtime" in worker_cmdline(victim)  # a worker, not a keeper
        assert victim != two_workers.process.pid
        os.kill(victim, signal.SIGKILL)  # its record locks go with it
        deadline = time.monotonic() + 30
        while not exited(victim) and time.monotonic() < deadline:
            time.sleep(0.02)  # the kernel releases the locks as the process ends
        assert exited(victim)
        response = other.post(f"{two_workers.url}/execute", json={"command": "echo free"},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["stdout"] == "free\n"
    finally:
        for response, _ in held:
            response.close()
        # The dead worker's commands are orphans now; do not leave them behind.
        for i in range(MAX_COMMANDS):
            for pid in wait_until_gone(f"424212{i}", timeout=0.1):
                os.kill(pid, signal.SIGKILL)
    assert two_workers.alive()
    # The dead worker's commands no longer count as running (its counters still count).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = requests.get(f"{two_workers.url}/metrics", timeout=30).text
        if "sandbox_runtime_commands_running 0.0" in text:
            break
        time.sleep(0.1)
    assert "sandbox_runtime_commands_running 0.0" in text
