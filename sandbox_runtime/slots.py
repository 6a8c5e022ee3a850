"""The bound on concurrent commands, shared by every worker process of one server.

Called by app.py: `Slots(n)` is made once by create_app() (in gunicorn's master, before it
forks the workers: the app is preloaded), and every worker inherits the same anonymous file.
A running command holds a POSIX record lock on one byte of that file (byte i = slot i);
`acquire()` tries each free byte without waiting and answers None when all are held, so the
caller can refuse at once (429). POSIX locks belong to a process, so:

- a worker that dies (killed, OOM) loses its locks with it: no slot ever leaks;
- threads of one worker share its locks, so each worker also keeps its own set of the slots
  its threads hold, and never offers one of those twice.

It must not close or reopen the slot file anywhere in a worker: closing any descriptor of
that file drops all of the process's locks on it (commands get no copy: they are spawned
with close_fds, and the descriptor is close-on-exec anyway).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

_BUSY = (errno.EAGAIN, errno.EACCES)


def _anonymous_file() -> int:
    """A file with no name: memfd (no writable filesystem needed), else an unlinked temp file."""
    with contextlib.suppress(OSError, AttributeError):
        return os.memfd_create("sandbox-runtime-slots", os.MFD_CLOEXEC)
    import tempfile  # only without memfd; it is slow to import under gVisor ptrace

    fd, path = tempfile.mkstemp(prefix="sandbox-runtime-slots-")
    os.unlink(path)
    return fd


class Slots:
    """At most `size` holders at once across the processes forked after construction."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._fd = _anonymous_file()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._held: set[int] = set()
        # Where this process starts looking: workers start apart, so they rarely collide.
        self._next = 0

    def _this_process(self) -> None:
        """Called under the lock: after a fork, the new process holds no locks yet."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._held = set()
            self._next = pid % self.size

    def acquire(self) -> int | None:
        """A free slot's number, now held by this process; None when all are taken."""
        with self._lock:
            self._this_process()
            for step in range(self.size):
                slot = (self._next + step) % self.size
                if slot in self._held:
                    continue
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                except OSError as exc:
                    if exc.errno in _BUSY:
                        continue  # held by another worker
                    raise
                self._held.add(slot)
                self._next = (slot + 1) % self.size
                return slot
            return None

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._held:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)
                self._held.discard(slot)

    def in_use_here(self) -> int:
        """Slots held by this process (for tests and logs)."""
        with self._lock:
            self._this_process()
            return len(self._held)


def locks_work() -> bool:
    """Whether record locks on an anonymous file work here (some sandboxes lack them)."""
    try:
        slots = Slots(1)
    except OSError:
        return False
    try:
        slot = slots.acquire()
        if slot is None:
            return False
        slots.release(slot)
        return True
    except OSError:
        return False
    finally:
        os.close(slots._fd)


class LocalSlots:
    """The fallback when record locks do not work: a bound for one process only (the server
    then runs a single worker, see __main__.py)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = list(range(size))
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        with self._lock:
            if slot not in self._free:
                self._free.append(slot)

    def in_use_here(self) -> int:
        with self._lock:
            return self.size - len(self._free)


def make(size: int) -> Slots | LocalSlots:
    return Slots(size) if locks_work() else LocalSlots(size)
