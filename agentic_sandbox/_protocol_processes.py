"""The runtime's background-process calls without IO: start, list, state, output, wait, kill.

Used by SandboxClient.start/processes and Process (agentic_sandbox._client), and by their
async twins (agentic_sandbox._async_client), which send them. Each function returns an
agentic_sandbox._protocol.Call; `wait_slice()` cuts a long wait into requests the runtime
holds. Nothing here sends a byte or sleeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from agentic_sandbox._models import ProcessInfo, ProcessOutput
from agentic_sandbox._protocol import (
    RUN_GRACE_S,
    Call,
    command_call,
    exit_and_signal,
    typed,
    unexpected,
    url_path,
)

__all__ = ["kill_call", "output_call", "process_call", "process_info", "processes_call",
           "start_call", "wait_call", "wait_slice"]

# The runtime holds one wait request at most this long; a longer wait is several requests.
MAX_WAIT_SLICE_S: Final = 30.0


def process_info(answer: Any) -> ProcessInfo:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        raise unexpected("/processes")
    running = typed(answer, "running", bool, False)
    exit_code, signal_name = (None, None) if running else exit_and_signal(answer)
    return ProcessInfo(
        id=answer["id"], command=typed(answer, "command", str, ""), running=running,
        exit_code=exit_code, signal=signal_name,
        timed_out=typed(answer, "timed_out", bool, False),
        started_at=typed(answer, "started_at", (int, float), None),
        ended_at=typed(answer, "ended_at", (int, float), None))


def _process_output(answer: Any) -> ProcessOutput:
    info = process_info(answer)
    return ProcessOutput(stdout=typed(answer, "stdout", str, ""),
                         stderr=typed(answer, "stderr", str, ""),
                         stdout_truncated=typed(answer, "stdout_truncated", bool, False),
                         stderr_truncated=typed(answer, "stderr_truncated", bool, False),
                         info=info)


def _process_path(process_id: str, action: str = "") -> str:
    if not isinstance(process_id, str) or not process_id:
        raise ValueError("a process id is a non-empty string")
    return "/processes/" + url_path(process_id) + (f"/{action}" if action else "")


def start_call(command: str, limit: float | None, env: Mapping[str, str] | None,
               cwd: str | None, timeout: float | None) -> Call[ProcessInfo]:
    """start() (POST /processes): `limit` is the process's own timeout (None: the
    runtime's longest, a day by default); `timeout` the call's."""
    body = command_call(command, limit, env, cwd).json
    return Call("POST", "/processes", timeout, process_info, json=body)


def processes_call(timeout: float | None) -> Call[list[ProcessInfo]]:
    def parse(answer: Any) -> list[ProcessInfo]:
        if not isinstance(answer, list):
            raise unexpected("GET /processes")
        return [process_info(item) for item in answer]
    return Call("GET", "/processes", timeout, parse)


def process_call(process_id: str, timeout: float | None) -> Call[ProcessInfo]:
    return Call("GET", _process_path(process_id), timeout, process_info)


def output_call(process_id: str, timeout: float | None) -> Call[ProcessOutput]:
    return Call("GET", _process_path(process_id, "output"), timeout, _process_output)


def kill_call(process_id: str, timeout: float | None) -> Call[ProcessInfo]:
    return Call("POST", _process_path(process_id, "kill"), timeout, process_info)


def wait_call(process_id: str, wait: float) -> Call[ProcessInfo]:
    """One wait request of at most `wait` seconds (wait_slice); its read deadline adds
    RUN_GRACE_S."""
    return Call("POST", _process_path(process_id, "wait"), wait + RUN_GRACE_S, process_info,
                json={"timeout": wait})


def wait_slice(deadline: float | None, now: float) -> float:
    """How long the next wait request may wait: what is left of `deadline` (None: no
    end), at most MAX_WAIT_SLICE_S."""
    if deadline is None:
        return MAX_WAIT_SLICE_S
    return max(0.0, min(MAX_WAIT_SLICE_S, deadline - now))

