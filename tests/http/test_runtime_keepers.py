"""Command keepers' own lifecycle, with real processes: none is ever left behind.

A keeper exits when its server goes away (end-of-file on its control socket, or a failed
send because the server closed first), and a retired keeper (one holding a finished
command's background processes) exits once they end, then is reaped by its server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandbox_runtime import config, procs
from tests.http.runtime_fixtures import processes, processes_with, runtime_server


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
        workers = [p for p in processes_with("sandbox-runtime") if p != server.process.pid]
        keepers = [k for w in workers for k in keepers_of(w)]
        assert keepers
    assert wait_gone(keepers) == []


def test_a_retired_keeper_ends_with_its_background_process(tmp_path):
    with runtime_server(tmp_path) as server:
        out = server.run("sleep 4 </dev/null >/dev/null 2>&1 & echo $PPID")
        keeper = int(out["stdout"])
        assert alive(keeper)  # retired: it holds the background sleep's group
        deadline = time.monotonic() + 20
        while Path(f"/proc/{keeper}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
            server.run("true")  # the server reaps exited retired keepers as it goes
        assert not Path(f"/proc/{keeper}").exists()
