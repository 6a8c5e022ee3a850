"""One command: spawn `/bin/sh -c` under rlimits, read capped output, enforce the deadline.

Called by app.py for POST /execute and /execute/stream. It knows nothing about HTTP. It must
never block past the command's deadline, never hold more than `max_output_bytes` of a stream
in memory (output past the cap is read and discarded, so the command keeps running and never
stalls on a full pipe), and never leave a timed-out command's process alive.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import logging
import os
import resource
import select
import socket
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field

from sandbox_runtime import procs
from sandbox_runtime.config import MIB, Config

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
READ_SIZE = 65536
STREAMS = ("stdout", "stderr")
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HANGUP = POLLRDHUP | select.POLLHUP | select.POLLERR
# Who asked for a command: gunicorn's client socket as an fd (a hang-up shows as POLLRDHUP),
# or stdio's stdin as a socket object (under gVisor a donated host socket reports its
# hang-up only as readable end-of-file, so it is watched for reads and peeked at).
Client = int | socket.socket
SHELL_EVAL = '__sandbox_cmd=$1\nshift\neval "unset -v __sandbox_cmd\n$__sandbox_cmd"\n'


@dataclass(frozen=True)
class Limits:
    """How each command gets its rlimits: a shell prefix, an argv prefix, or a preexec_fn."""

    kind: str  # "shell", "prlimit" or "preexec"
    shell_prefix: str = ""
    argv_prefix: tuple[str, ...] = ()
    preexec: Callable[[], None] | None = None


def _wanted(config: Config) -> dict[str, int]:
    """Resource name in /proc/<pid>/limits -> the soft=hard value every command gets."""
    return {
        "Max address space": config.command_address_space_mib * MIB,
        "Max file size": config.command_file_size_mib * MIB,
        "Max processes": config.command_max_processes,
        "Max core file size": 0,
    }


# How a candidate shows the limits it applied: /proc/self/limits where it exists, else
# util-linux's prlimit reading its own (gVisor has no /proc/<pid>/limits). Both report bytes,
# whatever unit the shell's ulimit takes.
REPORT = ("cat /proc/self/limits 2>/dev/null || exec prlimit --raw --noheadings "
          "--output=RESOURCE,SOFT,HARD --as --fsize --nproc --core")
PRLIMIT_NAMES = {"AS": "Max address space", "FSIZE": "Max file size",
                 "NPROC": "Max processes", "CORE": "Max core file size"}


def _limits_of(argv: list[str], preexec: Callable[[], None] | None = None) -> dict[str, int]:
    """Run a candidate mechanism around REPORT; the limits it applied with soft = hard."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10, preexec_fn=preexec,
                             check=False).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, int] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] in PRLIMIT_NAMES:  # prlimit: NAME SOFT HARD
            name, parts = PRLIMIT_NAMES[words[0]], words[1:]
        else:  # /proc/self/limits: a 26-column name, then soft, hard, units
            name, parts = line[:26].strip(), line[26:].split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[0] == parts[1]:
            found[name] = int(parts[0])
    return found


def choose_limits(config: Config) -> Limits:
    """Pick the cheapest mechanism that demonstrably applies every rlimit on this machine.

    A `ulimit` prefix inside the command's own shell costs nothing beyond the shell, while a
    Python preexec_fn forces a full fork of the server (about 1.4 ms per command on a host,
    about 25 ms under gVisor's ptrace platform). Shells differ (dash: `-p` processes, 512-byte
    file blocks; bash: `-u`, 1 KiB blocks), so each candidate is checked, in bytes, through
    REPORT before use; if nothing can show its limits, the preexec_fn (which cannot fail
    silently) is used.
    """
    wanted = _wanted(config)
    as_kib = config.command_address_space_mib * 1024
    fsize = config.command_file_size_mib * MIB
    nproc = config.command_max_processes
    for proc_flag, block in (("-p", 512), ("-u", 512), ("-u", 1024)):
        prefix = (f"ulimit -c 0 && ulimit -v {as_kib} && ulimit -f {fsize // block} && "
                  f"ulimit {proc_flag} {nproc} || exit 126\n")
        got = _limits_of([SHELL, "-c", prefix + REPORT])
        if all(got.get(k) == v for k, v in wanted.items()):
            return Limits("shell", shell_prefix=prefix)
    argv = ("prlimit", f"--as={wanted['Max address space']}",
            f"--fsize={wanted['Max file size']}", f"--nproc={nproc}", "--core=0", "--")
    got = _limits_of([*argv, SHELL, "-c", REPORT])
    if all(got.get(k) == v for k, v in wanted.items()):
        return Limits("prlimit", argv_prefix=argv)

    def preexec() -> None:
        for res, value in ((resource.RLIMIT_AS, wanted["Max address space"]),
                           (resource.RLIMIT_FSIZE, wanted["Max file size"]),
                           (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (value, value))

    return Limits("preexec", preexec=preexec)


@dataclass
class Outcome:
    """What a finished command produced; the JSON body of POST /execute."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    killed: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }


_ids = itertools.count(1)


class Command:
    """A running command. Iterate `chunks()` to drive it; `outcome` is complete afterwards."""

    def __init__(self, command: str, *, timeout_s: float, cwd: str, env: Mapping[str, str],
                 config: Config, limits: Limits, base_env: Mapping[str, str]) -> None:
        self.id = f"{os.getpid()}-{next(_ids)}-{os.urandom(4).hex()}"
        self.cap = config.max_output_bytes
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.outcome = Outcome()
        full_env = {**base_env, **env, procs.MARKER_ENV: self.id}
        if limits.kind == "shell":
            # One shell, no second exec (that would cost about 0.5 ms): set the limits, then
            # eval the command with no positional parameters and no trace of the variable,
            # so it behaves as under `sh -c command` ($0 is "sh", $# is 0).
            argv = [SHELL, "-c", limits.shell_prefix + SHELL_EVAL, "sh", command]
        else:
            argv = [*limits.argv_prefix, SHELL, "-c", command]
        with procs.SPAWN_LOCK:
            # Registered under the lock so the orphan reaper never reaps this child.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=full_env, start_new_session=True, close_fds=True,
                preexec_fn=limits.preexec)
            procs.tracked.add(self.proc.pid)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._files = {self.proc.stdout.fileno(): self.proc.stdout,
                       self.proc.stderr.fileno(): self.proc.stderr}
        self._names = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}
        self._inodes = [os.fstat(fd).st_ino for fd in self._files]
        self._counts = {"stdout": 0, "stderr": 0}
        self._kept: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        try:
            self._pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (OSError, AttributeError):
            self._pidfd = None  # old kernel or gVisor without pidfd: fall back to polling
        self._done = False

    def chunks(self, client: Client | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield (stream, bytes) as output arrives (only bytes under the cap), until the end.

        `client` is the client's socket, when known: if the client hangs up, the command
        is killed at once rather than left running until its deadline.
        """
        try:
            if (yield from self._pump(client)):
                self._finish()
        finally:
            self.close()

    def close(self) -> None:
        """End the command now if it still runs (its consumer went away): kill the tree."""
        if not self._done:
            self._timeout(reason="abandoned")
            self._finish()

    def run(self, client: Client | None = None) -> Outcome:
        """Drive the command to its end and return the collected outcome."""
        for _ in self.chunks(client):
            pass
        return self.outcome

    def _pump(self, client: Client | None) -> Generator[tuple[str, bytes], None, bool]:
        """Read until both pipes close and the shell exits (True), or the deadline passes
        (killed, True), or the client hangs up (False: the caller kills it as abandoned)."""
        poller = select.poll()
        for fd in self._files:
            poller.register(fd, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        client_fd = client if isinstance(client, int) or client is None else client.fileno()
        if client_fd is not None:
            # Hang-up only: a pipelined next request (POLLIN) must not count as leaving,
            # except on a socket object, whose readable data is peeked at (_client_left).
            poller.register(client_fd, POLLRDHUP if isinstance(client, int)
                            else POLLRDHUP | select.POLLIN)
        exited = False
        while self._files or not exited:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self._timeout(reason="deadline")
                return True
            if self._pidfd is None and not self._files:
                # No pidfd: wait for the exit with the deadline, without reaping too early.
                try:
                    self.proc.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    continue
                exited = True
                continue
            for fd, events in poller.poll(remaining * 1000):
                if fd == client_fd:
                    if events & HANGUP or _client_left(client):
                        return False
                    poller.unregister(fd)  # a pipelined request waits: stop watching
                    continue
                if fd == self._pidfd:
                    poller.unregister(fd)
                    exited = True
                    continue
                data = os.read(fd, READ_SIZE)
                name = self._names[fd]
                if not data:
                    poller.unregister(fd)
                    self._files.pop(fd).close()
                    continue
                room = self.cap - self._counts[name]
                self._counts[name] += len(data)
                if room <= 0:
                    continue
                kept = data[:room]
                self._kept[name].append(kept)
                yield name, kept
        return True

    def _timeout(self, *, reason: str) -> None:
        # The shell is not reaped yet, so its pid (= session id) cannot have been reused.
        self.outcome.timed_out = reason == "deadline"
        self.outcome.killed = procs.kill_tree(self.proc.pid, self._inodes, self.id)
        # Every writer is dead: drain what is left without waiting for anyone else.
        for fd, file in list(self._files.items()):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)
                while True:
                    data = os.read(fd, READ_SIZE)
                    if not data:
                        break
                    name = self._names[fd]
                    room = self.cap - self._counts[name]
                    self._counts[name] += len(data)
                    if room > 0:
                        self._kept[name].append(data[:room])
            file.close()
        self._files.clear()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        for file in self._files.values():
            file.close()
        self._files.clear()
        self.proc.wait()
        with procs.SPAWN_LOCK:
            procs.tracked.discard(self.proc.pid)
        if self._pidfd is not None:
            os.close(self._pidfd)
        out = self.outcome
        out.exit_code = self.proc.returncode
        out.stdout = b"".join(self._kept["stdout"])
        out.stderr = b"".join(self._kept["stderr"])
        out.stdout_truncated = self._counts["stdout"] > self.cap
        out.stderr_truncated = self._counts["stderr"] > self.cap
        out.duration_s = time.monotonic() - self.started
        if out.timed_out or out.killed:
            procs.reap_orphans()


def _client_left(client: Client | None) -> bool:
    """After a readable event on the client: end-of-file (it left) or data (it did not)."""
    if not isinstance(client, socket.socket):
        return True
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class StreamDecoder:
    """UTF-8 decoding across chunk boundaries, one decoder per stream."""

    def __init__(self) -> None:
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                          for name in STREAMS}

    def decode(self, name: str, data: bytes) -> str:
        return self._decoders[name].decode(data)

    def flush(self, name: str) -> str:
        return self._decoders[name].decode(b"", final=True)
