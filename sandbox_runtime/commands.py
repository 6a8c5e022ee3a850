"""POST /execute and /execute/stream: validate the body, take a slot, run, record.

Called by routes.py's two command routes. It checks every field of the request (each error
names the field), holds one slot of the command bound (slots.py) for the command's life,
hands the command to execute.py, and counts and logs its outcome. The command itself (the
keeper, the deadline, the output caps) is execute.py's: this module must not touch
processes or pipes, and must release the slot on every path, a client's hang-up included.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox_runtime import confine
from sandbox_runtime.errors import BadRequest, NotFound, ServiceUnavailable, TooManyRequests
from sandbox_runtime.execute import Client, Command, StreamDecoder
from sandbox_runtime.runtime import Runtime

log = logging.getLogger("sandbox_runtime")

FIELDS = {"command", "timeout", "env", "cwd"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV_VALUE = 128 * 1024


@dataclass(frozen=True)
class Execution:
    """A validated /execute body."""

    command: str
    timeout_s: float
    env: dict[str, str]
    cwd: str


def body_limit(rt: Runtime) -> int:
    """The largest /execute body that can hold valid fields."""
    cfg = rt.cfg
    return cfg.max_command_bytes * 2 + cfg.max_env_entries * (MAX_ENV_VALUE + 256) + 4096


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (JSON's \\ud800 escapes give lone surrogates,
    which no argv or environment can carry)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse(body: Mapping[str, Any], rt: Runtime, *, background: bool = False) -> Execution:
    """Validate an /execute (or, `background`, a /processes) body; every message names the
    field at fault. A background process's timeout defaults to, and may be up to,
    max_process_timeout_s."""
    cfg = rt.cfg
    default_timeout = cfg.max_process_timeout_s if background else cfg.default_timeout_s
    max_timeout = cfg.max_process_timeout_s if background else cfg.max_timeout_s
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(FIELDS))}")
    command = body.get("command")
    if not isinstance(command, str):
        raise BadRequest("command: required, must be a string")
    if "\0" in command or not _encodable(command) or \
            len(command.encode()) > cfg.max_command_bytes:
        raise BadRequest(f"command: must hold no NUL or lone surrogates and at most "
                         f"{cfg.max_command_bytes} bytes")
    timeout = body.get("timeout", default_timeout)
    if timeout is None:
        timeout = default_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise BadRequest("timeout: must be a number of seconds")
    if not 0 < timeout <= max_timeout:
        raise BadRequest(f"timeout: must be > 0 and at most {max_timeout} seconds")
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("env: must be an object of string to string")
    if len(env) > cfg.max_env_entries:
        raise BadRequest(f"env: at most {cfg.max_env_entries} entries")
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise BadRequest(f"env: invalid variable name {key[:100]!r}")
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_ENV_VALUE \
                or not _encodable(value):
            raise BadRequest(f"env: value of {key!r} must be a string without NUL or lone "
                             f"surrogates, at most {MAX_ENV_VALUE} characters")
    return Execution(command, float(timeout), env, _cwd(body.get("cwd"), cfg.base_dir))


def _cwd(cwd: Any, base: str) -> str:
    if cwd is None:
        return base
    if not isinstance(cwd, str):
        raise BadRequest("cwd: must be a path string")
    real = confine.resolve(base, cwd, what="cwd")
    if not os.path.exists(real):
        raise NotFound(f"cwd: {cwd!r} does not exist")
    if not os.path.isdir(real):
        raise BadRequest(f"cwd: {cwd!r} is not a directory")
    return real


class Slot:
    """One running command's hold on the command bound and the running gauge; `release`
    gives both back and records the command, once."""

    def __init__(self, rt: Runtime, command: Command, number: int) -> None:
        self.rt, self.command, self.number = rt, command, number
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            self.command.close()  # no-op when finished; kills the tree when abandoned
        finally:
            self.rt.metrics.running.dec()
            self.rt.slots.release(self.number)
            record(self.rt, self.command)


def start(rt: Runtime, job: Execution) -> Slot:
    """The command started, holding a slot: 429 when none is free, 503 when it cannot start."""
    number = rt.slots.acquire()
    if number is None:
        rt.metrics.rejected.inc()
        raise TooManyRequests(f"busy: {rt.cfg.max_concurrent_commands} commands already "
                              "running; retry later")
    try:
        command = Command(job.command, timeout_s=job.timeout_s, cwd=job.cwd, env=job.env,
                          config=rt.cfg, keepers=rt.keepers, base_env=rt.base_env)
    except OSError as exc:
        rt.slots.release(number)
        # EAGAIN: the process limit is reached (a fork bomb is still being cleaned up).
        raise ServiceUnavailable(f"cannot start the command: {exc.strerror}") from None
    except BaseException:
        rt.slots.release(number)
        raise
    rt.metrics.running.inc()
    return Slot(rt, command, number)


def run(rt: Runtime, job: Execution, client: Client | None) -> dict[str, object]:
    """POST /execute: the command to its end; the JSON answer."""
    slot = start(rt, job)
    try:
        outcome = slot.command.run(client)
    finally:
        slot.release()
    return outcome.to_json()


class CommandStream:
    """The NDJSON body of /execute/stream; closing it early kills the command."""

    def __init__(self, slot: Slot, client: Client | None) -> None:
        self.slot = slot
        self.client = client

    def __iter__(self) -> Iterator[bytes]:
        decoder = StreamDecoder()
        command = self.slot.command
        try:
            yield b""  # the head goes out now, not with the command's first output
            for name, data in command.chunks(self.client):
                text = decoder.decode(name, data)
                if text:
                    yield (json.dumps({"stream": name, "data": text}) + "\n").encode()
            for name in ("stdout", "stderr"):
                text = decoder.flush(name)
                if text:
                    yield (json.dumps({"stream": name, "data": text}) + "\n").encode()
            final = {k: v for k, v in command.outcome.to_json().items()
                     if k not in ("stdout", "stderr")}
            yield (json.dumps(final) + "\n").encode()
        finally:
            self.close()

    def close(self) -> None:
        self.slot.release()


def record(rt: Runtime, command: Command) -> None:
    """Count a finished command; log the ones that hit a limit."""
    out = command.outcome
    m = rt.metrics
    m.commands.labels("timeout" if out.timed_out else "exit").inc()
    m.duration.observe(out.duration_s)
    if out.killed:
        m.killed.inc(out.killed)
    for name in ("stdout", "stderr"):
        if getattr(out, f"{name}_truncated"):
            m.truncated.labels(name).inc()
    if out.timed_out or out.killed or out.stdout_truncated or out.stderr_truncated:
        log.info("command %s", json.dumps({
            "id": command.id, "exit_code": out.exit_code, "timed_out": out.timed_out,
            "killed": out.killed, "duration_s": round(out.duration_s, 3),
            "stdout_truncated": out.stdout_truncated,
            "stderr_truncated": out.stderr_truncated}))
