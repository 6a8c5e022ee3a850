"""No process a command started outlives its timeout or its cancellation, however it detaches.

The real server (gunicorn over TCP on loopback) runs every form of tests/escapes.py with a
1 s timeout; right after the timed-out answer no live process on this host may carry the
form's marker (the server answers only once the command's processes are gone). The server
runs as this user, so the host's /proc sees everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.escapes import FORMS, command, markers
from tests.http.runtime_fixtures import processes_with


def kill_leftovers(marker: str) -> None:
    """After a failure: survivors must not leak into the next test."""
    for pid in processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_nothing_outlives_a_timeout(hostile, runtime, name):
    marker = str(markers()[name])
    try:
        with hostile("runtime", f"escape past a 1 s timeout: {name}"):
            out = runtime.run(command(name, sys.executable), timeout=1)
            assert out["timed_out"] is True, out
            assert processes_with(marker) == []
            assert runtime.run("echo next")["stdout"] == "next\n"
    finally:
        kill_leftovers(marker)


CANCELLED = ["env -i setsid in a subshell, fds closed",
             "respawner: each copy double-forks the next, then becomes the marker"]


@pytest.mark.parametrize("name", CANCELLED)
def test_nothing_outlives_a_client_that_hangs_up(hostile, runtime, name):
    marker = str(markers()[name])
    session = requests.Session()
    try:
        with hostile("runtime", f"escape, then the client hangs up: {name}"):
            response = session.post(f"{runtime.url}/execute/stream", stream=True, timeout=30,
                                    json={"command": f"echo go; {command(name, sys.executable)}",
                                          "timeout": 30})
            lines = response.iter_lines()
            assert json.loads(next(lines)) == {"stream": "stdout", "data": "go\n"}
            time.sleep(0.5)  # the form has detached by now
            assert processes_with(marker)
            response.close()
            session.close()
            deadline = time.monotonic() + 10  # the server notices the hang-up on its own time
            while processes_with(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert processes_with(marker) == []
    finally:
        kill_leftovers(marker)


def test_a_command_that_kills_its_keeper_loses_every_process(hostile, runtime):
    marker = "4246201"
    try:
        with hostile("runtime", "a command kills its keeper, then detaches"):
            out = runtime.run(f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                              "kill -9 $PPID; sleep 30", timeout=20)
            assert (out["exit_code"], out["signal"], out["timed_out"]) == \
                (137, "SIGKILL", False), out
            assert processes_with(marker) == []
            assert runtime.run("echo next")["stdout"] == "next\n"
    finally:
        kill_leftovers(marker)


def test_only_a_started_background_process_stays_and_in_its_keepers_group(runtime):
    """A plain command's `nohup ... &` ends with its command (before issue 16 it stayed);
    a process started with POST /processes stays, in a keeper group of its own that a
    later command's timeout does not take along, until it is killed, tree and all."""
    marker = "4246202"
    try:
        out = runtime.run(f"nohup sleep {marker} </dev/null >/dev/null 2>&1 & echo started")
        assert (out["stdout"], out["timed_out"], out["exit_code"]) == ("started\n", False, 0)
        assert processes_with(marker) == []
        started = runtime.post("/processes", json={
            "command": f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                       f"exec sleep {marker}"}).json()
        deadline = time.monotonic() + 10
        while len(processes_with(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = processes_with(marker)
        assert len(pids) == 2
        groups = {os.getpgid(pid) for pid in pids}
        assert len(groups) == 1  # setsid did not take the first one out
        keeper = Path(f"/proc/{groups.pop()}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"keeper.py") for part in keeper), keeper
        assert runtime.run("sleep 30", timeout=1)["timed_out"] is True
        assert sorted(processes_with(marker)) == sorted(pids)
        killed = runtime.post(f"/processes/{started['id']}/kill").json()
        assert (killed["exit_code"], killed["signal"]) == (137, "SIGKILL")
        assert processes_with(marker) == []
    finally:
        kill_leftovers(marker)
