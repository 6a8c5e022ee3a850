"""Command keepers on the server's side: start them, hand one to each command, end them.

Called by execute.py (a Command takes a keeper, runs through it, and gives it back, retires
it, or ends it with its whole process group), runtime.py (one KeeperPool per server
process, made after gunicorn's fork) and launch.py (a sandbox's first process reaps its
orphans with `reap`). keeper.py is the keeper itself and says what a keeper
guarantees. Linux only.

A keeper runs one command at a time. After a command that ended with nothing of it left
alive, the keeper goes back to the pool for the next command. After a command that left
processes running (`nohup srv &`), the keeper is killed with its whole group as the command
ends: only background processes (background.py, each in a keeper of its own) may outlive
their request. A keeper is retired (its socket closed, reaped once it exited) only when the
pool has enough idle ones.
After a timeout, a cancellation, or a keeper that died or broke the protocol, the keeper's
group is killed whole (keeper.kill_group) and the keeper reaped only after that, so its pid,
which is the group's id, cannot be reused meanwhile.

Reaping is `reap()`, the one reaper: it waits for retired keepers that have exited and, in a
sandbox's first process (which gVisor makes every orphan's parent), for orphans. It must
never reap a keeper still in use (Keeper.kill does, after its group is gone): keepers are
listed in `tracked`, under `SPAWN_LOCK`, from spawn to reaping. Keepers are spawned under
SPAWN_LOCK too, since the control socket's child end is made inheritable for the spawn.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import sys
import threading
import time

from sandbox_runtime import keeper as keeper_mod
from sandbox_runtime.config import MIB, Config

log = logging.getLogger(__name__)

SPAWN_LOCK = threading.Lock()
tracked: set[int] = set()  # every keeper of this process, from spawn to reaping
retired: set[int] = set()  # the tracked keepers that hold a finished command's processes
KEEPER_PATH = os.path.abspath(keeper_mod.__file__)  # in every keeper's argv
MAX_IDLE = 8
REAP_INTERVAL_S = 2.0
# How long acquire() waits for a verdict (normally there already: it takes one /proc scan).
SETTLE_TIMEOUT_S = 5.0


class KeeperError(OSError):
    """No keeper could take the command (cannot spawn one, or it failed to set up)."""


class Keeper:
    """The server's handle on one keeper process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.flags: int | None = None  # from its HELLO
        self.clean: bool | None = True  # its last VERDICT; None while one is due
        self._buffer = b""

    def send_run(self, path: str, argv: list[str], env: dict[str, str], cwd: str,
                 deadline: float, limits: list[int], fds: list[int]) -> None:
        data = keeper_mod.encode_run(path, argv, env, cwd, deadline, limits)
        self.clean = None
        sent = self.sock.sendmsg([data[:65536]],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_array(fds))])
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def read(self, timeout: float | None) -> tuple[bytes, int, int] | None:
        """The next message (a HELLO is recorded and skipped, a VERDICT recorded and
        returned); None at end-of-file. TimeoutError if none came in `timeout` seconds."""
        while True:
            while len(self._buffer) < keeper_mod.MESSAGE_SIZE:
                if timeout is not None:
                    ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
                    if not ready:
                        raise TimeoutError("the keeper did not answer")
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    return None
                self._buffer += data
            kind, a, b = keeper_mod.parse_message(self._buffer[:keeper_mod.MESSAGE_SIZE])
            self._buffer = self._buffer[keeper_mod.MESSAGE_SIZE:]
            if kind == keeper_mod.HELLO:
                self.flags = a
                continue
            if kind == keeper_mod.VERDICT:
                self.clean = bool(a)
            return kind, a, b

    def settle(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for the verdict on the last command: True if nothing
        of it is alive. A keeper that died or says nothing in time counts as not clean."""
        deadline = time.monotonic() + timeout
        while self.clean is None:
            try:
                if self.read(max(0.0, deadline - time.monotonic())) is None:
                    return False
            except (TimeoutError, OSError):
                return False
        return self.clean

    def pending(self) -> bool:
        """Whether a whole message is already buffered (poll would not say so)."""
        return len(self._buffer) >= keeper_mod.MESSAGE_SIZE

    def kill(self) -> int:
        """End the keeper with everything of its group; reap it. The number of processes."""
        killed = keeper_mod.kill_group(self.pid)
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        with SPAWN_LOCK:
            tracked.discard(self.pid)
        return max(0, killed - 1)  # the keeper itself is not the command's


def _fd_array(fds: list[int]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


class KeeperPool:
    """The keepers of one server process: idle ones ready to run, retired ones to reap."""

    def __init__(self, cfg: Config) -> None:
        self.limits = [cfg.command_address_space_mib * MIB, cfg.command_file_size_mib * MIB,
                       cfg.command_max_processes, 0]
        self.owner = os.getpid()
        self._idle: list[Keeper] = []
        self._lock = threading.Lock()
        self._last_reap = time.monotonic()

    def spawn(self) -> Keeper:
        """Start a keeper, leader of a new process group; it sets itself up while the
        caller goes on (its HELLO comes first)."""
        try:
            with SPAWN_LOCK:
                pid, fd = keeper_mod.start(sys.executable)
                tracked.add(pid)
        except OSError as exc:
            raise KeeperError(exc.errno, f"cannot start a command keeper: {exc.strerror}") \
                from None
        return Keeper(pid, socket.socket(fileno=fd))

    def adopt(self, pid: int, fd: int) -> None:
        """Take in a keeper started by keeper.start() before this pool existed (the local
        backend's launcher starts one before importing the rest of the runtime)."""
        with SPAWN_LOCK:
            tracked.add(pid)
        with self._lock:
            self._idle.append(Keeper(pid, socket.socket(fileno=fd)))

    def acquire(self) -> Keeper:
        """An idle keeper whose last command left nothing alive, or a new one."""
        if time.monotonic() - self._last_reap >= REAP_INTERVAL_S:
            self._last_reap = time.monotonic()
            reap()
        while True:
            with self._lock:
                keeper = self._idle.pop() if self._idle else None
            if keeper is None:
                return self.spawn()
            if keeper.clean is not False and keeper.settle(SETTLE_TIMEOUT_S):
                return keeper
            keeper.kill()

    def prewarm(self) -> None:
        """Have one idle keeper ready (its interpreter start is off the next command's path)."""
        with self._lock:
            if self._idle:
                return
        try:
            keeper = self.spawn()
        except KeeperError as exc:
            log.warning("cannot start a command keeper in advance: %s", exc.strerror)
            return
        with self._lock:
            self._idle.append(keeper)

    def release(self, keeper: Keeper) -> None:
        """A command ended normally. Its verdict is read now: if something of it is still
        alive (`srv &` left behind), the keeper's group is killed with it, since only
        background processes (background.py) may outlive their command; else the keeper
        goes back to the pool."""
        if not keeper.settle(SETTLE_TIMEOUT_S):
            keeper.kill()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(keeper)
                return
        self._retire(keeper)

    def _retire(self, keeper: Keeper) -> None:
        keeper.sock.close()  # an idle keeper exits at end-of-file; a retired one lives on
        with SPAWN_LOCK:
            retired.add(keeper.pid)
        reap()

    def close(self) -> None:
        """The server stops serving: its idle keepers see end-of-file and exit."""
        with self._lock:
            idle, self._idle = self._idle, []
        for keeper in idle:
            keeper.sock.close()

    def retired(self) -> list[int]:
        """Pids of retired keepers, each the group id of a finished command's background
        processes."""
        reap()
        with SPAWN_LOCK:
            return sorted(retired)


def check_hello(keeper: Keeper) -> None:
    """Raise KeeperError unless the keeper said it holds the group lock."""
    if keeper.flags is None or not keeper.flags & keeper_mod.LOCKED:
        raise KeeperError(errno.EPERM, "cannot contain commands here: the keeper could not "
                          "install its seccomp filter")


def reap(*, orphans: bool = False) -> int:
    """waitpid the children that nobody else waits for; how many were reaped.

    Those are retired keepers that have exited and, with `orphans` (a sandbox's first
    process: gVisor has no child subreaper, so every orphan of a command, and of a killed
    keeper, becomes its child), every other zombie child that is not a keeper. gVisor
    leaves /proc/<pid>/task/<tid>/children empty, so orphans are found by the parent in
    /proc/<pid>/stat; only zombies are touched, never a keeper in use.
    """
    count = 0
    with SPAWN_LOCK:
        for pid in list(retired):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                done = pid
            if done:
                retired.discard(pid)
                tracked.discard(pid)
                count += 1
        if not orphans:
            return count
        me = os.getpid()
        for pid in [int(name) for name in os.listdir("/proc") if name.isdigit()]:
            fields = None if pid in tracked else keeper_mod.proc_stat(pid)
            if fields is None or fields[0] != b"Z" or int(fields[1]) != me:
                continue
            with contextlib.suppress(ChildProcessError):
                count += os.waitpid(pid, os.WNOHANG)[0] == pid
    return count


def reap_forever(interval: float) -> None:
    """The reaper of a sandbox's first process: reap(orphans=True) every `interval`."""
    while True:
        try:
            reap(orphans=True)
        except Exception:  # the reaper must outlive any odd /proc state
            log.exception("reaping orphans failed")
        time.sleep(interval)
