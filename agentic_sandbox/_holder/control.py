"""The command line's side of named local sandboxes: start a holder, stop one.

Called by agentic_sandbox._named (`agentic-sandbox create NAME`, `delete NAME`). spawn()
starts the holder process (agentic_sandbox._holder.process) detached, waits for its one-line
answer on a pipe, and raises the error it reports as the class it names. stop() sends it
SIGTERM and waits; after a holder that died without cleaning up, the local backend's stale
clean-up removes its sandbox.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Final

from agentic_sandbox._backends.local.runsc import private_state
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    ClaimFailedError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from agentic_sandbox._holder.records import holder_running, named_dir, read_record, remove

__all__ = ["spawn", "stop"]

log = logging.getLogger(__name__)

# Ready answer from a holder: the sandbox's start-up plus this much for the holder's own.
SPAWN_GRACE_S: Final = 30.0
STOP_TIMEOUT_S: Final = 60.0


def _read_answer(fd: int, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The holder's one-line answer on the ready pipe; {} if it ended without one."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxTimeoutError(f"the sandbox was not ready within {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if readable:
            piece = os.read(fd, 4096)
            if not piece:
                break
            data += piece
    try:
        answer = json.loads(data.split(b"\n", 1)[0] or b"{}")
    except ValueError:
        answer = {}
    return answer if isinstance(answer, dict) else {}


def _error_from(answer: dict[str, Any], name: str, fallback: str) -> SandboxError:
    """The error the holder reported, as the class it named (SandboxError for others)."""
    message = str(answer.get("error") or fallback)
    kind = str(answer.get("type"))
    for claim_error in (TemplateNotFoundError, ClaimFailedError):
        if kind == claim_error.__name__:
            return claim_error(message, reason=str(answer.get("reason") or ""), claim=name)
    for error in (BackendUnavailableError, SandboxConnectionError, SandboxTimeoutError):
        if kind == error.__name__:
            return error(message)
    return SandboxError(message)


def spawn(name: str, *, template: str, namespace: str = "default",
          state_dir: str | os.PathLike[str] | None = None,
          ready_timeout: float = 180.0, idle_timeout: str | int | None = None) -> str:
    """Start a holder for `name` and wait until its sandbox is ready; returns the sandbox id."""
    directory = named_dir(state_dir, name)
    root = directory.parent
    private_state(root.parent, root.name)
    existing = read_record(directory)
    if existing is not None and holder_running(existing):
        raise ClaimFailedError(f"a local sandbox named {name!r} already exists",
                               reason="AlreadyExists", claim=name)
    log_path = root / f"{name}.log"
    argv = [sys.executable, "-m", "agentic_sandbox._holder", name, "--template", template,
            "--namespace", namespace, "--state-dir", str(root.parent),
            "--ready-timeout", str(ready_timeout)]
    if idle_timeout is not None:
        argv += ["--idle-timeout", str(idle_timeout)]
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [*argv, "--ready-fd", str(write_end)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log_file, pass_fds=(write_end,), cwd="/",
                start_new_session=True)  # a Ctrl-C in this terminal must not reach it later
        os.close(write_end)
        write_end = -1
        try:
            answer = _read_answer(read_end, process, ready_timeout + SPAWN_GRACE_S)
        except BaseException:
            process.terminate()  # interrupted or too slow: it removes what it made
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
            raise
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer.get("ok"):
        return str(answer.get("sandbox", ""))
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT_S)
    tail = ""
    with contextlib.suppress(OSError):
        tail = log_path.read_bytes()[-800:].decode("utf-8", "replace").strip()
        log_path.unlink()
    raise _error_from(answer, name, f"the sandbox holder exited ({process.returncode}) before its "
                              f"sandbox was ready: {tail}")


def stop(name: str, *, state_dir: str | os.PathLike[str] | None = None,
         timeout: float = STOP_TIMEOUT_S) -> None:
    """Delete the named sandbox: SIGTERM its holder and wait; clean up after a dead one."""
    directory = named_dir(state_dir, name)
    record = read_record(directory)
    if record is None:
        raise ClaimFailedError(f"no local sandbox named {name!r}", reason="NotFound",
                               claim=name)
    if holder_running(record):
        os.kill(int(record["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while holder_running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        if holder_running(record):
            log.warning("holder of %r did not stop in %.0f s; killing it", name, timeout)
            os.kill(int(record["pid"]), signal.SIGKILL)
            while holder_running(record):
                time.sleep(0.05)
    if directory.exists():
        # The holder died without cleaning up: the local backend removes sandboxes whose
        # owner is gone (a zombie too) when its manager starts, which this does.
        from agentic_sandbox._backends import local
        local.manager(directory.parent.parent)
        remove(directory)
    with contextlib.suppress(OSError):
        (directory.parent / f"{name}.log").unlink()
