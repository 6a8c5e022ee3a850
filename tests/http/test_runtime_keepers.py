"""Command keepers' own lifecycle, with real processes: none is ever left behind.

A keeper exits when its server goes away (end-of-file on its control socket, or a failed
send because the server closed first); a keeper whose command left processes behind is
killed with them when the command ends (only background processes, POST /processes, may
outlive their request), and a background process's own keeper ends with it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandbox_runtime import config, procs
from tests.http.runtime_fixtures import (
    processes,
    processes_with,
    runtime_server,
    wait_until_gone,
)


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie is dead, waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def keepers_of(parent: int) -> list[int]:
    return [pid for pid, ppid, _, cmdline in processes()
            if ppid == parent and procs.KEEPER_PATH.encode() in cmdline]


def test_a_keeper_whose_server_closed_before_its_hello_exits(tmp_path):
    pool = procs.KeeperPool(config.load({"base_dir": str(tmp_path)}))
    keeper = pool.spawn()
    keeper.sock.close()  # before the keeper's interpreter is even up: its HELLO fails
    try:
        assert wait_gone([keeper.pid]) == []
    finally:
        if alive(keeper.pid):
            os.kill(keeper.pid, 9)
        os.waitpid(keeper.pid, 0)


def test_a_stopped_server_leaves_no_keeper(tmp_path):
    with runtime_server(tmp_path) as server:
        assert server.run("echo hi")["stdout"] == "hi\n"
        # This server's workers only: other runtimes on the machine (other tests, other
        # sessions) keep their keepers while this one stops.
        workers = [pid for pid, ppid, _, _ in processes() if ppid == server.process.pid]
        keepers = [k for w in workers for k in keepers_of(w)]
        assert keepers
    assert wait_gone(keepers) == []


def test_a_keeper_is_killed_with_what_its_command_left_behind(tmp_path):
    with runtime_server(tmp_path) as server:
        try:
            out = server.run("sleep 4242301 </dev/null >/dev/null 2>&1 & echo $PPID")
            keeper = int(out["stdout"])
            # Before: the keeper was retired, holding the sleep until it ended on its own.
            assert wait_gone([keeper]) == []
            assert processes_with("4242301") == []
            assert not Path(f"/proc/{keeper}").exists()  # reaped, not a zombie
        finally:
            for pid in processes_with("4242301"):  # a failure must not leak into reruns
                os.kill(pid, 9)


def test_a_background_process_s_keeper_ends_with_it(tmp_path):
    with runtime_server(tmp_path) as server:
        started = server.post("/processes", json={"command": "echo $PPID; sleep 1"}).json()
        done = server.post(f"/processes/{started['id']}/wait", json={"timeout": 20}).json()
        assert (done["running"], done["exit_code"]) == (False, 0)
        output = server.get(f"/processes/{started['id']}/output").json()
        keeper = int(output["stdout"])
        assert wait_gone([keeper]) == []
        assert not Path(f"/proc/{keeper}").exists()


def test_a_stopped_server_ends_its_background_processes(tmp_path):
    with runtime_server(tmp_path) as server:
        answer = server.post("/processes", json={"command": "sleep 4242302"})
        assert answer.status_code == 201
        assert processes_with("4242302")
    assert wait_until_gone("4242302") == []
