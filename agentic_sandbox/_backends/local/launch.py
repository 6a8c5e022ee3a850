"""How the runtime is launched inside a local sandbox: the launcher program and its argv.

Called by the local backend's OCI spec (agentic_sandbox._backends.local.spec: the sandbox's
first process) and `runsc exec` process spec (later runtimes), and by its manager, which
compiles the runtime's bytecode once (the host is read-only inside). The argv runs
`sandbox-runtime --stdio` with the workspace as its base folder, on the channel given as
stdin and stdout. This module starts nothing itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Final

__all__ = ["RUNTIME_LAUNCH", "WORKSPACE", "compile_runtime", "visible_paths"]

WORKSPACE: Final = "/workspace"

# gVisor imports the donated stdin and stdout one after the other; both are the same host
# socket, and importing stdin makes it non-blocking on the host, so stdout arrives in the
# sandbox with O_NONBLOCK set and a large answer fails with EAGAIN once the socket buffer is
# full. Clearing the flag inside (the sentry then waits as for any blocking file) fixes it,
# in the same interpreter that then runs the runtime.
#
# The interpreter starts with -I -S -B: no site (its .pth and editable-install finders cost
# ~50 ms under ptrace), no environment, nothing from the current directory (the workspace,
# which code in the sandbox can write) on sys.path, no attempt to write bytecode to the
# read-only host. The directories the runtime imports from come as the first argument and
# go after the standard library, whose imports then find their modules at the first try;
# the workspace is the second.
#
# It calls stdio.main directly (argparse costs ~25 ms under ptrace), and starts the first
# command keeper (its own interpreter start, about 60 ms under ptrace) before anything else
# of the runtime is imported (config and procs alone take ~120 ms there), so both start-ups
# overlap; the streams are taken off fds 0 and 1 first, so the keeper sees neither.
# Standard modules the runtime imports but does not use on its way to answering commands
# (LATER: dataclasses' inspect, files' queue; ~30 ms under ptrace) are imported on first
# attribute access instead.
#
# The sandbox's first process is the first runtime. When its channel ends (the client hung
# up, a stream abandoned), it must not exit: the sandbox would end with it, and the
# workspace and background processes with the sandbox. It stays as the sandbox's init and
# reaps orphans (gVisor has no child subreaper: every orphan is reparented to it); later
# runtimes come in with `runsc exec`. If it crashes instead, the sandbox ends, which the
# client sees as end-of-file (a crash must never leave a request waiting on a channel
# nobody serves).
RUNTIME_LAUNCH: Final = """\
LATER = ("inspect", "queue")
import fcntl, os, sys, threading
for fd in (0, 1):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
sys.path += sys.argv[1].split(os.pathsep)
later_lock = threading.Lock()
class Later(type(sys)):
    def __getattr__(self, attr):
        with later_lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = __import__(self.__name__)
            vars(self).update(vars(real))
        return getattr(real, attr)
for name in LATER:
    sys.modules.setdefault(name, Later(name))
streams = (os.dup(0), os.dup(1))
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.dup2(2, 1)
from sandbox_runtime import keeper
first_keeper = keeper.start(sys.executable)
from sandbox_runtime import config, procs
overrides = {"base_dir": sys.argv[2]}
cfg = config.load(overrides)
keepers = procs.KeeperPool(cfg)
keepers.adopt(*first_keeper)
from sandbox_runtime import stdio
status = stdio.main(overrides, cfg.log_level, keepers, streams)
if os.getpid() != 1:
    sys.exit(status)
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    signal.sigwaitinfo([signal.SIGCHLD])
"""


def compile_runtime() -> None:
    """Write the runtime's bytecode where it is missing or stale (the sandbox cannot: the
    host is read-only inside; compiling there on every start costs ~100 ms under ptrace)."""
    spec = importlib.util.find_spec("sandbox_runtime")
    if spec is None or not spec.origin:
        return
    import compileall

    with contextlib.suppress(Exception):  # a read-only install was compiled when installed
        compileall.compile_dir(os.path.dirname(spec.origin), quiet=2)


def _runtime_paths() -> list[str]:
    """Where the runtime's imports live on this host: the folder holding sandbox_runtime,
    then this interpreter's site-packages (and the folders of the runtime's dependencies,
    wherever they are installed)."""
    import site

    paths: list[str] = []
    for module in ("sandbox_runtime", "flask", "werkzeug", "prometheus_client"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parent.parent))
        if module == "sandbox_runtime":
            paths += site.getsitepackages()
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _runtime_argv() -> list[str]:
    return [sys.executable, "-I", "-S", "-B", "-c", RUNTIME_LAUNCH,
            os.pathsep.join(_runtime_paths()), WORKSPACE]


def visible_paths() -> list[str]:
    """Host paths the runtime needs even when they sit in a hidden folder (the interpreter,
    the virtualenv, the runtime's source): bound back read-only inside the tmpfs."""
    spec = importlib.util.find_spec("sandbox_runtime")
    source = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
    candidates = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
                  Path(sys.executable).resolve().parent.parent}
    if source is not None:
        candidates.add(source)
    return sorted(str(p) for p in candidates)
