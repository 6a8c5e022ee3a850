"""Process-tree hygiene for commands: subreaper, orphan reaping, finding and killing survivors.

Called by execute.py (kill a timed-out command's whole tree) and app.py (install the
subreaper once per process). Linux only: it reads /proc. It must never signal the server
itself, and never `waitpid` a child that a live `subprocess.Popen` still owns (that would
steal its exit status): spawning and reaping share `SPAWN_LOCK` and `tracked` for that.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
MARKER_ENV = "SANDBOX_RUNTIME_COMMAND_ID"

# Held while a Popen is created and registered, and while orphans are reaped.
SPAWN_LOCK = threading.Lock()
tracked: set[int] = set()


def become_subreaper() -> bool:
    """Orphans of our commands reparent to us, not to init, so they stay findable and reapable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children_of_self() -> set[int]:
    pids: set[int] = set()
    me = os.getpid()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return pids
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{me}/task/{tid}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def reap_orphans() -> int:
    """waitpid every exited child we do not track (orphans adopted as subreaper)."""
    reaped = 0
    with SPAWN_LOCK:
        for pid in _children_of_self() - tracked:
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got:
                reaped += 1
    return reaped


class Reaper(threading.Thread):
    """Reaps adopted orphans every few seconds; zombies would count against RLIMIT_NPROC."""

    def __init__(self, interval_s: float = 2.0) -> None:
        super().__init__(name="sandbox-runtime-reaper", daemon=True)
        self.interval_s = interval_s

    def run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                reap_orphans()
            except Exception:  # the reaper must outlive any odd /proc state
                log.exception("reaper failed")


_reaper_lock = threading.Lock()
_reaper: Reaper | None = None


def start_reaper() -> None:
    """Start the reaper thread once per process (after gunicorn forked the worker)."""
    global _reaper
    with _reaper_lock:
        if _reaper is None or not _reaper.is_alive():
            _reaper = Reaper()
            _reaper.start()


def _stat(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, pgrp, session, state) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[1]), int(rest[2]), int(rest[3]), rest[0].decode()


def _holds_pipe(pid: int, inodes: set[str]) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") in inodes:
                return True
        except OSError:
            continue
    return False


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read()
    except OSError:
        return False


def find_tree(session: int, pipe_inodes: Iterable[int], command_id: str) -> set[int]:
    """Live processes that belong to one command, however they tried to leave it.

    A process belongs when it is in the command's session or process group, holds one of
    the command's pipes, carries the command's marker in its environment, or descends
    from one that does. Zombies are dead already and are left to the reaper.
    """
    me = os.getpid()
    links = {f"pipe:[{i}]" for i in pipe_inodes}
    marker = f"{MARKER_ENV}={command_id}\0".encode()
    stats: dict[int, tuple[int, int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    found: set[int] = set()
    for pid, (_ppid, pgrp, sid, state) in stats.items():
        if state in ("Z", "X"):
            continue
        if (sid == session or pgrp == session or _holds_pipe(pid, links)
                or _has_marker(pid, marker)):
            found.add(pid)
    # Descendants of anything found, in case they closed the pipes and scrubbed the env.
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, state) in stats.items():
        if state not in ("Z", "X"):
            children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != me:
                found.add(child)
                stack.append(child)
    found.discard(me)
    return found


def kill_tree(session: int, pipe_inodes: Iterable[int], command_id: str,
              *, rounds: int = 50) -> int:
    """SIGKILL a command's whole tree until a scan finds nothing alive; returns pids killed.

    The process group goes first in one atomic kill (a fork bomb cannot outrun it); then
    repeated /proc scans catch those that left with setsid or double forks.
    """
    inodes = list(pipe_inodes)
    killed: set[int] = set()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    for _ in range(rounds):
        victims = find_tree(session, inodes, command_id)
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= victims
        time.sleep(0.005)
    else:
        log.warning("processes of command %s survived %d kill rounds", command_id, rounds)
    return len(killed)
