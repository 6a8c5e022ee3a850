"""No process a command started outlives its timeout or its cancellation, under runsc.

Every form of tests/escapes.py runs in a real gVisor sandbox through agentic_sandbox's
client with a 1 s timeout. The sandbox's processes are not visible on the host, so a
follow-up command inside the same sandbox lists the live processes carrying the form's
marker: there must be none.
"""

from __future__ import annotations

import time

import pytest

from tests.escapes import FORMS, command, markers, survivors_command


@pytest.mark.parametrize("name", sorted(FORMS))
def test_nothing_outlives_a_timeout_under_runsc(hostile, sandbox, name):
    marker = markers()[name]
    with hostile("local", f"escape past a 1 s timeout under runsc: {name}"):
        result = sandbox.run(command(name), timeout=1)
        assert result.timed_out, result
        assert sandbox.run(survivors_command(marker)).stdout == ""


def test_nothing_outlives_a_cancelled_stream_under_runsc(hostile, sandbox):
    name = "env -i setsid in a subshell, fds closed"
    marker = markers()[name]
    with hostile("local", f"escape, then the client hangs up, under runsc: {name}"):
        stream = sandbox.stream(f"echo go; {command(name)}", timeout=60)
        assert next(iter(stream)).data == "go\n"
        time.sleep(0.5)  # the form has detached by now
        assert sandbox.run(survivors_command(marker)).stdout != ""
        stream.close()  # hang up mid-command
        deadline = time.monotonic() + 10  # the runtime notices the hang-up on its own time
        while sandbox.run(survivors_command(marker)).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox.run(survivors_command(marker)).stdout == ""


def test_a_background_process_of_a_command_that_ended_stays(sandbox):
    """...and stays its own command's: a later command timing out does not take it along
    (its keeper was retired, not reused)."""
    marker = 4246101
    result = sandbox.run(f"nohup sleep {marker} </dev/null >/dev/null 2>&1 & echo started")
    assert (result.stdout, result.timed_out, result.exit_code) == ("started\n", False, 0)
    try:
        assert sandbox.run(survivors_command(marker)).stdout != ""
        assert sandbox.run("sleep 30", timeout=1).timed_out
        assert sandbox.run(survivors_command(marker)).stdout != ""
    finally:
        sandbox.run(f"pkill -f 'sleep {marker}' || true")


def test_a_command_that_kills_its_keeper_loses_every_process_under_runsc(hostile, sandbox):
    marker = 4246201
    with hostile("local", "a command kills its keeper, then detaches, under runsc"):
        result = sandbox.run(f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                             "kill -9 $PPID; sleep 30", timeout=20)
        assert (result.exit_code, result.timed_out) == (-9, False), result
        assert sandbox.run(survivors_command(marker)).stdout == ""
