"""Background processes: commands started on purpose to outlive their request.

Called by routes.py (POST /processes, GET /processes, GET /processes/<id>[/output], POST
/processes/<id>/wait and /kill) and by launch.py (a `--stdio` runtime whose channel ended
stays until the processes it started have ended). The only processes that may outlive the
request that started them are these (a plain command's leftovers are killed when it ends:
procs.KeeperPool.release).

Each one is an execute.Command of its own, in a keeper of its own (so its whole tree is one
process group nothing can leave), driven by a thread of the server process that started it:
the thread reads its output, keeps at most `max_output_bytes` per stream (the rest is read
and discarded, as for any command) in files, and records the end. Its deadline is its
`timeout`, else `max_process_timeout_s`; the sandbox's end (pod deleted, runsc container
removed) and its server's end (the keeper sees end-of-file) kill it too. At most
`max_processes` run at once in a sandbox; finished ones are kept (for their output and
exit status) up to the same number, oldest dropped first.

The registry is a folder outside the workspace (`state_dir`, else a folder under the
temporary directory named after the workspace): one JSON record per process, replaced
atomically, and its two output files, so every gunicorn worker and every `--stdio` runtime
of a sandbox sees the same processes. It is no security boundary: commands run as the
server's user, as they do for the workspace. A kill checks the keeper's start time against
the record before it signals the group, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from sandbox_runtime import keeper as keeper_mod
from sandbox_runtime.commands import Execution
from sandbox_runtime.errors import NotFound, ServiceUnavailable, TooManyRequests
from sandbox_runtime.execute import Command
from sandbox_runtime.runtime import Runtime

ID = re.compile(r"[0-9a-f]{16}\Z")
POLL_S = 0.02
MAX_WAIT_S = 30.0  # one wait request holds a server thread at most this long
KILL_SETTLE_S = 10.0
PUBLIC = ("id", "command", "running", "exit_code", "signal", "timed_out", "started_at",
          "ended_at")


def state_dir(rt: Runtime) -> str:
    if rt.cfg.state_dir:
        return rt.cfg.state_dir
    digest = hashlib.sha256(os.path.realpath(rt.cfg.base_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"sandbox-runtime-{os.getuid()}-{digest}")


def _start_time(pid: int) -> str | None:
    fields = keeper_mod.proc_stat(pid)
    return None if fields is None or len(fields) < 20 else fields[19].decode()


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in PUBLIC}


class Processes:
    """The background processes of one sandbox, as seen from one server process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.dir = state_dir(rt)
        self._owned: dict[str, threading.Event] = {}  # started here, still running
        self._lock = threading.Lock()

    # -- the registry ---------------------------------------------------------------------

    def _path(self, pid: str, suffix: str) -> str:
        return os.path.join(self.dir, pid + suffix)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, record: dict[str, Any]) -> None:
        path = self._path(record["id"], ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

    def _read(self, pid: str) -> dict[str, Any]:
        if not ID.match(pid):
            raise NotFound(f"no process {pid[:40]!r}")
        try:
            with open(self._path(pid, ".json")) as f:
                record: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            raise NotFound(f"no process {pid!r}") from None
        return self._settled(record)

    def _settled(self, record: dict[str, Any]) -> dict[str, Any]:
        """A running record whose server process is gone: its keeper saw end-of-file and
        killed the group, so it ended by SIGKILL."""
        if record.get("running") and _start_time(int(record["owner"])) != record["owner_start"]:
            record.update(running=False, exit_code=137, signal="SIGKILL")
        return record

    def _records(self) -> list[dict[str, Any]]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.endswith(".json") and ID.match(name[:-5]):
                    with contextlib.suppress(NotFound):
                        found.append(self._read(name[:-5]))
        return sorted(found, key=lambda r: (r.get("started_at", 0), r["id"]))

    # -- the API --------------------------------------------------------------------------

    def start(self, job: Execution) -> dict[str, Any]:
        cfg = self.rt.cfg
        with self._locked():
            records = self._records()
            running = [r for r in records if r["running"]]
            if len(running) >= cfg.max_processes:
                raise TooManyRequests(f"busy: {cfg.max_processes} background processes "
                                      "already running; wait for or kill one")
            finished = [r for r in records if not r["running"]]
            for old in finished[:max(0, len(finished) - cfg.max_processes + 1)]:
                for suffix in (".json", ".stdout", ".stderr"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(old["id"], suffix))
            pid = os.urandom(8).hex()
            try:
                command = Command(job.command, timeout_s=job.timeout_s, cwd=job.cwd,
                                  env=job.env, config=cfg, keepers=self.rt.keepers,
                                  base_env=self.rt.base_env, dedicated=True)
            except OSError as exc:
                raise ServiceUnavailable(f"cannot start the process: {exc.strerror}") \
                    from None
            record = {"id": pid, "command": job.command, "running": True, "exit_code": None,
                      "signal": None, "timed_out": False, "started_at": time.time(),
                      "ended_at": None, "owner": os.getpid(),
                      "owner_start": _start_time(os.getpid()),
                      "keeper": command.keeper.pid,
                      "keeper_start": _start_time(command.keeper.pid),
                      "stdout_truncated": False, "stderr_truncated": False}
            for suffix in (".stdout", ".stderr"):
                open(self._path(pid, suffix), "wb").close()
            self._write(record)
            done = threading.Event()
            with self._lock:
                self._owned[pid] = done
        threading.Thread(target=self._drive, args=(command, record, done),
                         name=f"process-{pid}", daemon=True).start()
        return public(record)

    def _drive(self, command: Command, record: dict[str, Any], done: threading.Event) -> None:
        """The process's output into its files (capped by Command), then its end."""
        pid = record["id"]
        try:
            with open(self._path(pid, ".stdout"), "ab", buffering=0) as out, \
                    open(self._path(pid, ".stderr"), "ab", buffering=0) as err:
                files = {"stdout": out, "stderr": err}
                for name, data in command.chunks(None):
                    files[name].write(data)
        finally:
            command.close()  # ends it if writing failed (a full disk)
            answer = command.outcome.to_json()
            record.update({key: answer[key] for key in (
                "exit_code", "signal", "timed_out", "stdout_truncated", "stderr_truncated")},
                running=False, ended_at=time.time())
            with contextlib.suppress(OSError):
                self._write(record)
            with self._lock:
                self._owned.pop(pid, None)
            done.set()

    def list(self) -> list[dict[str, Any]]:
        return [public(r) for r in self._records()]

    def info(self, pid: str) -> dict[str, Any]:
        return public(self._read(pid))

    def wait(self, pid: str, timeout: float) -> dict[str, Any]:
        """The process's state once it ended, or after `timeout` (at most MAX_WAIT_S)."""
        deadline = time.monotonic() + min(timeout, MAX_WAIT_S)
        delay = POLL_S
        while True:
            record = self._read(pid)
            left = deadline - time.monotonic()
            if not record["running"] or left <= 0:
                return public(record)
            with self._lock:
                done = self._owned.get(pid)
            if done is not None:
                done.wait(left)  # started here: woken at its end
            else:
                time.sleep(min(delay, left))  # another server process's: look again
                delay = min(delay * 2, 0.2)

    def kill(self, pid: str) -> dict[str, Any]:
        """SIGKILL the process's whole group (every process of its tree); its state after."""
        record = self._read(pid)
        if record["running"] and _start_time(int(record["keeper"])) == record["keeper_start"]:
            # The keeper is reaped only after its group is gone: while the record says
            # running and its start time matches, its pid is the group's id.
            keeper_mod.kill_group(int(record["keeper"]))
        return self.wait(pid, KILL_SETTLE_S)

    def output(self, pid: str) -> dict[str, Any]:
        record = self._read(pid)
        answer = public(record)
        cap = self.rt.cfg.max_output_bytes
        for name in ("stdout", "stderr"):
            try:
                with open(self._path(pid, "." + name), "rb") as f:
                    data = f.read(cap)
            except OSError:
                data = b""
            answer[name] = data.decode("utf-8", "replace")
            answer[f"{name}_truncated"] = bool(record.get(f"{name}_truncated"))
        return answer

    def wait_owned(self) -> None:
        """Block until every process started by this server process has ended (a `--stdio`
        runtime whose channel ended: its processes are not ended with it)."""
        while True:
            with self._lock:
                pending = list(self._owned.values())
            if not pending:
                return
            for done in pending:
                done.wait()
