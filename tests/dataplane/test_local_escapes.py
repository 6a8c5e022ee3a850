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


def test_a_command_s_background_process_ends_with_it_and_a_started_one_stays(sandbox):
    """Only sandbox.start() makes what may outlive its call (before: the `&` sleep stayed,
    its keeper retired); a started one stays through a later command's timeout, and its
    kill takes its whole tree."""
    marker = 4246101
    result = sandbox.run(f"nohup sleep {marker} </dev/null >/dev/null 2>&1 & echo started")
    assert (result.stdout, result.timed_out, result.exit_code) == ("started\n", False, 0)
    assert sandbox.run(survivors_command(marker)).stdout == ""
    process = sandbox.start(f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                            f"sleep {marker}")
    try:
        assert sandbox.run("sleep 30", timeout=1).timed_out
        assert sandbox.run(survivors_command(marker)).stdout != ""
    finally:
        assert process.kill().signal == "SIGKILL"
    assert sandbox.run(survivors_command(marker)).stdout == ""


def test_a_command_that_kills_its_keeper_loses_every_process_under_runsc(hostile, sandbox):
    marker = 4246201
    with hostile("local", "a command kills its keeper, then detaches, under runsc"):
        result = sandbox.run(f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                             "kill -9 $PPID; sleep 30", timeout=20)
        assert (result.exit_code, result.signal, result.timed_out) == \
            (137, "SIGKILL", False), result
        assert sandbox.run(survivors_command(marker)).stdout == ""
