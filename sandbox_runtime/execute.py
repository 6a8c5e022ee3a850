"""One command: run `/bin/sh -c` through a keeper, read capped output, enforce the deadline.

Called by core.py for POST /execute and /execute/stream. It knows nothing about HTTP. The
shell is started by a keeper (procs.py, keeper.py), which holds the command rlimits and a
process group the command's processes cannot leave. This module must never block past the
command's deadline, never hold more than `max_output_bytes` of a stream in memory (output
past the cap is read and discarded, so the command keeps running and never stalls on a full
pipe), and never answer a timed-out or abandoned command before its whole group is dead.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import itertools
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field

from sandbox_runtime import keeper as keeper_mod
from sandbox_runtime import procs
from sandbox_runtime.config import Config

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
READ_SIZE = 65536
STREAMS = ("stdout", "stderr")
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HANGUP = POLLRDHUP | select.POLLHUP | select.POLLERR
# How long a command waits for a keeper to start its shell, at least (a new keeper first
# starts its interpreter: tens of milliseconds, more under gVisor on a loaded machine).
START_TIMEOUT_S = 30.0
# Who asked for a command: gunicorn's client socket as an fd (a hang-up shows as POLLRDHUP),
# or stdio's stdin as a socket object (under gVisor a donated host socket reports its
# hang-up only as readable end-of-file, so it is watched for reads and peeked at).
Client = int | socket.socket


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
        exit_code, signal_name = exit_status(self.exit_code)
        return {
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "exit_code": exit_code,
            "signal": signal_name,
            "timed_out": self.timed_out,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }


def exit_status(code: int | None) -> tuple[int | None, str | None]:
    """A shell's wait status as the API reports it: (exit code, signal name). Killed by
    signal N (waitstatus_to_exitcode's -N): 128 + N, as a shell reports it, and the
    signal's name ("SIGKILL"); else the exit code and None."""
    if code is None or code >= 0:
        return code, None
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"SIG{-code}"
    return 128 - code, name


_ids = itertools.count(1)


class Command:
    """A running command. Iterate `chunks()` to drive it; `outcome` is complete afterwards.

    Raises procs.KeeperError (an OSError) when no keeper can start it: the caller answers
    503 (for instance while a fork bomb holds the process limit).
    """

    def __init__(self, command: str, *, timeout_s: float, cwd: str, env: Mapping[str, str],
                 config: Config, keepers: procs.KeeperPool,
                 base_env: Mapping[str, str], dedicated: bool = False) -> None:
        """`dedicated`: the keeper ends with the command instead of going back to the pool
        (a background process: its keeper's pid must not name another command's group)."""
        self.id = f"{os.getpid()}-{next(_ids)}-{os.urandom(4).hex()}"
        self.cap = config.max_output_bytes
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.outcome = Outcome()
        self._keepers = keepers
        self._dedicated = dedicated
        self._done = False
        self._exited = False
        self._killed = False
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._files = {out_r: "stdout", err_r: "stderr"}
        try:
            self.keeper, started = self._start(["sh", "-c", command], {**base_env, **env},
                                               cwd, [out_w, err_w])
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._counts = {"stdout": 0, "stderr": 0}
        self._kept: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        if not started:
            self._kill(reason="deadline")  # the deadline passed before the shell started

    def _start(self, argv: list[str], env: dict[str, str], cwd: str,
               fds: list[int]) -> tuple[procs.Keeper, bool]:
        """Hand the command to a keeper and wait until it has started the shell (True), or
        until the deadline (False). An idle keeper that died meanwhile (a command may kill
        any process of our uid) is ended and a fresh one tried once."""
        for attempt in (1, 2):
            keeper = self._keepers.acquire() if attempt == 1 else self._keepers.spawn()
            try:
                keeper.send_run(SHELL, argv, env, cwd, self.deadline, self._keepers.limits,
                                fds)
                answer = keeper.read(max(0.0, self.deadline - time.monotonic()))
            except TimeoutError:
                return keeper, False
            except OSError:
                answer = None
            if answer is None:
                keeper.kill()
                if attempt == 1:
                    continue
                raise procs.KeeperError(errno.EAGAIN, "the command keeper did not start")
            kind, value, _ = answer
            try:
                procs.check_hello(keeper)
                if kind == keeper_mod.FAILED:
                    raise procs.KeeperError(value, "the command keeper could not set up: "
                                            f"{os.strerror(value)}")
                if kind != keeper_mod.SPAWNED:
                    raise procs.KeeperError(value, os.strerror(value))
            except BaseException:
                keeper.kill()
                raise
            return keeper, True
        raise AssertionError("unreachable")

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
            self._kill(reason="abandoned")
            self._finish()

    def run(self, client: Client | None = None) -> Outcome:
        """Drive the command to its end and return the collected outcome."""
        for _ in self.chunks(client):
            pass
        return self.outcome

    def _pump(self, client: Client | None) -> Generator[tuple[str, bytes], None, bool]:
        """Read until both pipes close and the keeper reports the shell's exit (True), or
        the deadline passes or the keeper is lost (killed, True), or the client hangs up
        (False: the caller kills it as abandoned)."""
        if self._killed:
            return True  # the deadline passed before the keeper started the shell
        poller = select.poll()
        for fd in self._files:
            poller.register(fd, select.POLLIN)
        keeper_fd = self.keeper.sock.fileno()
        poller.register(keeper_fd, select.POLLIN)
        client_fd = client if isinstance(client, int) or client is None else client.fileno()
        if client_fd is not None:
            # Hang-up only: a pipelined next request (POLLIN) must not count as leaving,
            # except on a socket object, whose readable data is peeked at (_client_left).
            poller.register(client_fd, POLLRDHUP if isinstance(client, int)
                            else POLLRDHUP | select.POLLIN)
        while self._files or not self._exited:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self._kill(reason="deadline")
                return True
            # A message already buffered (with the one read last) shows in no poll.
            events = [(keeper_fd, select.POLLIN)] if not self._exited and \
                self.keeper.pending() else poller.poll(remaining * 1000)
            for fd, mask in events:
                if fd == client_fd:
                    if mask & HANGUP or _client_left(client):
                        return False
                    poller.unregister(fd)  # a pipelined request waits: stop watching
                    continue
                if fd == keeper_fd:
                    try:
                        message = self.keeper.read(0)
                    except TimeoutError:
                        continue  # part of a message: the rest follows
                    if message is None or message[0] != keeper_mod.EXITED:
                        # The keeper died (a command killed it) or broke the protocol.
                        self._kill(reason="keeper lost")
                        return True
                    self.outcome.exit_code = message[1]
                    self._exited = True
                    poller.unregister(fd)
                    continue
                data = os.read(fd, READ_SIZE)
                name = self._files[fd]
                if not data:
                    poller.unregister(fd)
                    os.close(fd)
                    del self._files[fd]
                    continue
                room = self.cap - self._counts[name]
                self._counts[name] += len(data)
                if room <= 0:
                    continue
                kept = data[:room]
                self._kept[name].append(kept)
                yield name, kept
        return True

    def _kill(self, *, reason: str) -> None:
        """Kill the keeper's whole group (every process of the command), then drain."""
        self._killed = True
        self.outcome.timed_out = reason == "deadline"
        self.outcome.killed = self.keeper.kill()
        self.outcome.exit_code = -signal.SIGKILL
        self._exited = True
        if reason != "deadline":
            log.info("command %s: %s, its processes were killed", self.id, reason)
        # Every writer is dead: drain what is left without waiting for anyone else.
        for fd, name in list(self._files.items()):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)
                while True:
                    data = os.read(fd, READ_SIZE)
                    if not data:
                        break
                    room = self.cap - self._counts[name]
                    self._counts[name] += len(data)
                    if room > 0:
                        self._kept[name].append(data[:room])
            os.close(fd)
        self._files.clear()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        for fd in self._files:
            os.close(fd)
        self._files.clear()
        if self._dedicated and not self._killed:
            self.outcome.killed = self.keeper.kill()  # and whatever it left behind
        elif not self._killed:
            self._keepers.release(self.keeper)
        if (self._killed or self.keeper.clean is False) and not self._dedicated:
            self._keepers.prewarm()  # the next command finds a keeper ready
        out = self.outcome
        out.stdout = b"".join(self._kept["stdout"])
        out.stderr = b"".join(self._kept["stderr"])
        out.stdout_truncated = self._counts["stdout"] > self.cap
        out.stderr_truncated = self._counts["stderr"] > self.cap
        out.duration_s = time.monotonic() - self.started


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
