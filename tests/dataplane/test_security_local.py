"""Resource bombs inside a local gVisor sandbox: contained in the sandbox, host unaffected.

The isolation promises themselves (no network, host files unchanged, secrets hidden) are
proven by test_client_local_isolation.py, which tests/security_report.py counts as it is.
Here, hostile code tries to take the machine down from inside `runsc`: a fork bomb, a memory
bomb, a flood of output, a disk filler, escaping its timeout. Each needs a sandbox of its own
(a bomb may end the sandbox it ran in; that is allowed, the host is what must survive).
Records through `hostile`.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agentic_sandbox import AsyncSandboxClient, SandboxClient
from agentic_sandbox._exceptions import SandboxError
from tests.dataplane.conftest import TEMPLATE, write_template


def host_processes() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def settle_to(limit: int, timeout: float = 20.0) -> int:
    """Host process count once it is back under `limit` (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        count = host_processes()
        if count <= limit or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def survives_or_ended_cleanly(client) -> bool:
    """The sandbox still answers, or says clearly that it is gone (never hangs)."""
    try:
        return client.run("echo alive", timeout=20).stdout == "alive\n"
    except SandboxError:  # the sandbox may be ended by its own pids/memory limit: a clean
        return True       # client error, within the timeout, is what we ask for


def test_fork_bomb_is_contained(hostile, open_sandbox):
    sandbox = open_sandbox()
    before = host_processes()
    with hostile("local", "fork bomb under runsc"):
        try:
            result = sandbox.run("b() { b | b & }; b; sleep 30", timeout=3)
            assert result.timed_out or result.exit_code != 0
        except SandboxError:
            pass  # the sandbox's own pids limit ended it: contained, which is the promise
        assert survives_or_ended_cleanly(sandbox)
    with hostile("local", "fork bomb: host process table back to normal"):
        assert settle_to(before + 40) <= before + 40


def test_memory_bomb_is_contained(hostile, open_sandbox):
    sandbox = open_sandbox()
    with hostile("local", "memory bomb (8 GiB) under runsc"):
        result = sandbox.run("python3 -c 'x = bytearray(8 << 30)'; echo rc=$?", timeout=30)
        assert "rc=0" not in result.stdout
        assert survives_or_ended_cleanly(sandbox)


def test_output_flood_is_capped(hostile, sandbox):
    with hostile("local", "endless output under runsc"):
        result = sandbox.run("yes", timeout=2)
        assert result.timed_out
        assert len(result.stdout) <= 1024 * 1024
        assert sandbox.run("echo ok").stdout == "ok\n"


PRLIMIT = "prlimit --raw --noheadings --output=RESOURCE,SOFT,HARD --as --fsize --nproc --core"


def test_commands_carry_finite_limits_under_runsc(hostile, sandbox):
    # gVisor has no /proc/self/limits; prlimit reads a process's own rlimits in bytes. The
    # runtime's defaults: 4096 MiB address space, 1024 MiB files, 512 processes, no core.
    rows = {line.split()[0]: line.split()[1:]
            for line in sandbox.run(PRLIMIT).stdout.splitlines()}
    with hostile("local", "file size, processes, address space, core: all finite"):
        assert rows == {"AS": [str(4096 << 20)] * 2, "FSIZE": [str(1024 << 20)] * 2,
                        "NPROC": ["512"] * 2, "CORE": ["0"] * 2}, rows
    # ...and in a grandchild that the command started in the background.
    nested = sandbox.run(f"(sh -c '{PRLIMIT}' &) ; wait; sleep 0.2").stdout
    assert nested.split() == sandbox.run(PRLIMIT).stdout.split()


def test_the_file_size_limit_is_enforced_under_runsc(hostile, state_dir, tmp_path):
    """A template lowers the runtime's file-size limit to 1 MiB: a 3 MB write stops there."""
    write_template(tmp_path, "small-files",
                   'env: [{name: SANDBOX_RUNTIME_COMMAND_FILE_SIZE_MIB, value: "1"}]')
    from agentic_sandbox import SandboxClient
    small = SandboxClient("small-files", backend="local", templates_dir=str(tmp_path),
                          state_dir=state_dir, warm_pool=0).open()
    try:
        with hostile("local", "file-size rlimit enforced (1 MiB) under runsc"):
            result = small.run("head -c 3000000 /dev/zero > big.bin; echo rc=$?; "
                               "wc -c < big.bin")
            lines = result.stdout.split()
            assert lines[0] != "rc=0", result
            assert int(lines[1]) == 1 << 20, result
    finally:
        small.close()


def test_a_setsid_escape_does_not_outlive_its_timeout(hostile, sandbox):
    with hostile("local", "setsid + double fork escaping the timeout under runsc"):
        result = sandbox.run("(setsid sh -c 'sleep 4243001' &); sleep 4243002", timeout=1)
        assert result.timed_out
        for _ in range(50):
            left = sandbox.run("ps -eo args | grep -c '[s]leep 424300' || true").stdout
            if left.strip() == "0":
                break
            time.sleep(0.1)
        assert left.strip() == "0"
    with hostile("local", "no sandbox process visible on the host"):
        assert not any(b"4243001" in Path(f"/proc/{p}/cmdline").read_bytes()
                       for p in os.listdir("/proc") if p.isdigit()
                       and Path(f"/proc/{p}/cmdline").exists())


def test_many_concurrent_calls_on_one_sandbox_are_served_not_fatal(hostile, state_dir):
    """Each concurrent call needs a channel, and each channel past the first is a runtime of
    its own in the sandbox (a `runsc exec`, about 70-90 of its 1024 host threads under
    ptrace): 16 at once took the pids limit and ended the sandbox (finding 42). The
    transport holds at most MAX_CHANNELS; the rest wait their turn."""
    count = 24
    with hostile("local", f"{count} concurrent calls on one sandbox, sync and async"):
        with SandboxClient(TEMPLATE, backend="local", state_dir=state_dir,
                           warm_pool=0) as client:
            def one(i: int) -> str:
                return client.run(f"sleep 1; echo {i}", timeout=120).stdout

            with ThreadPoolExecutor(count) as pool:
                assert list(pool.map(one, range(count))) == [f"{i}\n" for i in range(count)]
            assert client.run("echo alive").stdout == "alive\n"

        async def many() -> list[str]:
            async with AsyncSandboxClient(TEMPLATE, backend="local", state_dir=state_dir,
                                          warm_pool=0) as aclient:
                results = await asyncio.gather(*(aclient.run(f"sleep 1; echo {i}", timeout=120)
                                                 for i in range(count)))
                return [r.stdout for r in results] + [(await aclient.run("echo alive")).stdout]

        assert asyncio.run(many()) == [f"{i}\n" for i in range(count)] + ["alive\n"]
