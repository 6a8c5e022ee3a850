"""Owner records of local sandboxes and holders: who still runs, by pid and start time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from agentic_sandbox._backends.local.owner import owner_alive, owner_record, process_state


def zombie() -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    """A child that has exited and is not reaped yet, and its owner record."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while True:
        found = process_state(child.pid)
        assert found is not None
        if found[0] == "Z":
            return child, {"pid": child.pid, "start": found[1]}
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)


def test_a_live_owner_is_alive_and_a_reused_pid_is_not():
    me = owner_record(workspace="/w")
    assert me["pid"] == os.getpid() and me["workspace"] == "/w"
    assert owner_alive(me)
    assert not owner_alive(me | {"start": "0"})  # the pid, now another process
    assert not owner_alive({"pid": 2**22 + 1, "start": me["start"]})
    assert not owner_alive({"pid": os.getpid()})  # no start time: cannot be told apart
    assert not owner_alive({})


def test_a_zombie_owner_is_gone():
    """An owner that exited and waits for its parent to reap it runs nothing any more: its
    sandboxes are stale (the stale clean-up must not count it as alive)."""
    child, record = zombie()
    try:
        assert not owner_alive(record)
    finally:
        child.wait()
    assert not owner_alive(record)
