"""The runtime over stdin/stdout: a local sandbox's first process, and `sandbox-runtime --stdio`.

Who runs it:

- the local gVisor backend (agentic_sandbox/_backends/local/launch.py), by path, as the sandbox's
  first process and again (`runsc exec`) for each later channel:
  `python -I -S -B .../sandbox_runtime/launch.py PATHS WORKSPACE`. No site (its .pth and
  editable-install finders cost ~50 ms under gVisor's ptrace platform), no environment,
  nothing from the current directory (the workspace, which code in the sandbox can write)
  on sys.path, no bytecode written to the read-only host. PATHS are the folders the runtime
  imports from, appended after the standard library, whose imports then find their modules
  at the first try;
- __main__.py, for `sandbox-runtime --stdio` (serve_stdio).

What it does, in this order, because each step costs under ptrace: it takes the request and
response streams off fds 0 and 1 (`take_streams`, so no command can read requests or write
into answers), starts the first command keeper (its own interpreter start, about 60 ms)
before the rest of the runtime is imported (about 120 ms), so both start-ups overlap, then
serves with stdio.py. Standard modules the runtime imports but does not use on its way to
answering commands (LATER: dataclasses' inspect, files.py's queue) are imported on first use
instead. Once no request has run for IDLE_WARM_S, what the first upload or download needs
is imported in the background.

The sandbox's first process is the first runtime. When its channel ends (the client hung
up, a stream abandoned), it must not exit: the sandbox would end with it, and the workspace
and background processes with the sandbox. It stays as the sandbox's init and reaps orphans
(procs.reap: gVisor has no child subreaper, every orphan is reparented to it); later
runtimes come in with `runsc exec`. If it crashes instead, the sandbox ends, which the
client sees as end-of-file (a crash must never leave a request waiting on a channel nobody
serves).

It must import nothing at module level beyond os and sys (it is the program's first code).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs start-up time; the annotations are strings
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

LATER = ("inspect", "queue")
IDLE_WARM_S = 0.3  # quiet time before the rest is imported in the background
REAP_INTERVAL_S = 1.0  # how often a sandbox's first process reaps orphans


def unblock(fds: tuple[int, ...]) -> None:
    """Clear O_NONBLOCK. gVisor imports the donated stdin and stdout one after the other;
    both are the same host socket, and importing stdin makes it non-blocking on the host,
    so stdout arrives with O_NONBLOCK set and a large answer fails with EAGAIN once the
    socket buffer is full. Cleared inside, the sentry waits as for any blocking file."""
    import fcntl

    for fd in fds:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def defer_imports(names: tuple[str, ...]) -> None:
    """Make `import name` cheap for each of `names`: the module is imported on its first
    attribute access (about 30 ms under ptrace for LATER, which start-up never uses)."""
    import threading

    lock = threading.Lock()

    class Later(type(sys)):  # type: ignore[misc]
        def __getattr__(self, attr: str) -> Any:
            with lock:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                real = __import__(self.__name__)
                self.__dict__.update(real.__dict__)
            return getattr(real, attr)

    for name in names:
        sys.modules.setdefault(name, Later(name))


def take_streams() -> tuple[int, int]:
    """Move the request and response streams off fds 0 and 1 (to non-inheritable fds):
    stdin becomes /dev/null and fd 1 points at stderr, so nothing but responses (not a
    stray print, not a child process) can reach the response stream, and no child can read
    requests. Returns (request_fd, response_fd)."""
    streams = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return streams


def serve_stdio(overrides: Mapping[str, Any], *, init: bool = False) -> int:
    """Serve the runtime on this process's stdin/stdout until the client is done; the exit
    status. `init`: this is a sandbox's first process, which reaps orphans meanwhile and,
    once the client is done, for good (it never returns)."""
    request_fd, response_fd = take_streams()
    from sandbox_runtime import keeper

    first_keeper = keeper.start(sys.executable)
    import threading

    from sandbox_runtime import app, config, logs, procs, stdio

    cfg = config.load(overrides)
    logs.setup(cfg.log_level)
    keepers = procs.KeeperPool(cfg)
    keepers.adopt(*first_keeper)
    application = app.create_app(cfg, keepers=keepers)
    reaper = threading.Thread(target=procs.reap_forever, args=(REAP_INTERVAL_S,),
                              name="sandbox-runtime-reaper", daemon=True)
    if init:
        reaper.start()
    quiet = Quiet()
    threading.Thread(target=quiet.then_warm_up, name="sandbox-runtime-warm",
                     daemon=True).start()
    try:
        status = stdio.serve_fds(application, request_fd, response_fd, quiet.set_busy)
        # The background processes started over this channel outlive it: this process
        # (their keepers' parent, driving their output) stays until they end.
        application.routes.processes.wait_owned()
    finally:
        keepers.close()  # idle keepers exit
    if init:
        reaper.join()  # stay as the sandbox's init
    return status


class Quiet:
    """When the server last finished a request, and whether one is in progress."""

    def __init__(self) -> None:
        import threading
        import time

        self.clock = time.monotonic
        self.busy = False
        self.since = self.clock()
        self.changed = threading.Condition()

    def set_busy(self, busy: bool) -> None:
        with self.changed:
            self.busy = busy
            self.since = self.clock()
            self.changed.notify_all()

    def then_warm_up(self) -> None:
        """Once no request has run for IDLE_WARM_S, import what uploads and downloads need."""
        with self.changed:
            while self.busy or self.clock() - self.since < IDLE_WARM_S:
                self.changed.wait(None if self.busy else IDLE_WARM_S - (self.clock()
                                                                        - self.since))
        from sandbox_runtime import routes

        try:
            routes.warm_up()
        except Exception:  # the request that needs them reports the problem
            import logging

            logging.getLogger(__name__).exception("importing the upload modules failed")


def main(argv: list[str]) -> int:
    """The local sandbox's program: `launch.py PATHS WORKSPACE` (see the module docstring)."""
    unblock((0, 1))
    sys.path += argv[1].split(os.pathsep)
    defer_imports(LATER)
    return serve_stdio({"base_dir": argv[2]}, init=os.getpid() == 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
