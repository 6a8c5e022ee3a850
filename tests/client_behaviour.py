"""The client's behaviour, written once, run on every backend with both clients.

tests/http/test_client_behaviour_tcp.py runs these against the real runtime under gunicorn
over TCP (through httpx's TCP transports, as the Kubernetes backend reaches the router);
tests/dataplane/test_client_local_behaviour.py against a local gVisor sandbox (runsc, the
socketpair channel). Each test takes `sandbox`: a Driver, one sync face over a
SandboxClient or an AsyncSandboxClient (whose calls it runs on an event loop of its own), so
the very same assertions hold for both clients. `max_processes` is the runtime's limit on
background processes in that tier.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest

from agentic_sandbox import (
    AsyncProcess,
    AsyncSandboxClient,
    OutputChunk,
    SandboxClient,
    SandboxRequestError,
)


class Driver:
    """A sync face over either client: awaitables are run on the driver's loop, and
    AsyncProcess handles come back wrapped too."""

    def __init__(self, client: SandboxClient | AsyncSandboxClient,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self._target: Any = client
        self._loop = loop
        self.kind = "async" if loop else "sync"

    def _settle(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            assert self._loop is not None
            value = self._loop.run_until_complete(value)
        if isinstance(value, AsyncProcess):
            wrapped = Driver.__new__(Driver)
            wrapped._target, wrapped._loop, wrapped.kind = value, self._loop, self.kind
            return wrapped
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._settle(attr(*args, **kwargs))

    def stream_all(self, command: str, **kwargs: Any) -> tuple[list[OutputChunk], Any]:
        """Every chunk of a streamed command, and the stream (exit_code, signal, result)."""
        if self._loop is None:
            with self._target.stream(command, **kwargs) as stream:
                return list(stream), stream

        async def collect() -> tuple[list[OutputChunk], Any]:
            async with self._target.stream(command, **kwargs) as stream:
                return [chunk async for chunk in stream], stream
        return self._loop.run_until_complete(collect())


def open_driver(kind: str, make: Any) -> Driver:
    """`make(cls)` builds an unopened client of class `cls`; returns it open in a Driver."""
    if kind == "sync":
        return Driver(make(SandboxClient).open(), None)
    loop = asyncio.new_event_loop()
    client = make(AsyncSandboxClient)
    loop.run_until_complete(client.open())
    return Driver(client, loop)


def close_driver(driver: Driver) -> None:
    driver.close()
    if driver._loop is not None:
        driver._loop.close()


def alive(sandbox: Driver, marker: int) -> str:
    """The command lines (inside the sandbox) that carry `marker`, one a line."""
    return sandbox.run(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | "
        f"grep -e '^sleep {marker}' || true").stdout


def gone(sandbox: Driver, marker: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while alive(sandbox, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(sandbox, marker) == ""


# -- the behaviours ----------------------------------------------------------------------------


def test_run_output_and_exit_code(sandbox):
    result = sandbox.run("echo out; echo err >&2; exit 7")
    assert (result.stdout, result.stderr, result.exit_code, result.signal) == \
        ("out\n", "err\n", 7, None)


def test_env_and_cwd(sandbox):
    sandbox.run("mkdir -p sub/deeper")
    result = sandbox.run('pwd; echo "$GREETING"', env={"GREETING": "hi"}, cwd="sub/deeper")
    assert result.stdout.endswith("/sub/deeper\nhi\n"), result


@pytest.mark.parametrize(("cwd", "status"), [("../..", 403), ("/etc", 403), ("nowhere", 404)])
def test_cwd_stays_in_the_workspace(sandbox, cwd, status):
    with pytest.raises(SandboxRequestError) as caught:
        sandbox.run("pwd", cwd=cwd)
    assert caught.value.status_code == status


def test_a_signal_is_reported_as_128_plus_n_and_its_name(sandbox):
    result = sandbox.run("echo before; kill -TERM $$; echo after")
    assert (result.stdout, result.exit_code, result.signal) == ("before\n", 143, "SIGTERM")
    result = sandbox.run("sleep 30", timeout=1)
    assert (result.exit_code, result.signal, result.timed_out) == (137, "SIGKILL", True)
    chunks, stream = sandbox.stream_all("echo x; kill -KILL $$")
    assert [c.data for c in chunks] == ["x\n"]
    assert (stream.exit_code, stream.signal, stream.result.signal) == \
        (137, "SIGKILL", "SIGKILL")


def test_stream_chunks_then_exit(sandbox):
    chunks, stream = sandbox.stream_all("echo one; echo two >&2; exit 3")
    assert "".join(c.data for c in chunks if c.stream == "stdout") == "one\n"
    assert "".join(c.data for c in chunks if c.stream == "stderr") == "two\n"
    assert stream.exit_code == 3 and stream.result.stdout == "one\n"


def test_files_round_trip(sandbox):
    sandbox.write("dir/f.txt", "hello")
    assert sandbox.read("dir/f.txt") == b"hello"
    assert [e.name for e in sandbox.list("dir")] == ["f.txt"]
    assert sandbox.exists("dir/f.txt") and not sandbox.exists("dir/none")


def test_a_plain_command_leaves_nothing_running(sandbox):
    marker = 4249001 if sandbox.kind == "sync" else 4249002
    result = sandbox.run(f"nohup sleep {marker} </dev/null >/dev/null 2>&1 & echo started")
    assert (result.stdout, result.exit_code) == ("started\n", 0)
    assert gone(sandbox, marker, within=2.0)


def test_a_background_process_outlives_its_call_and_is_read_waited_and_killed(sandbox):
    marker = 4249101 if sandbox.kind == "sync" else 4249102
    sandbox.run("mkdir -p sub")
    process = sandbox.start(f"echo started; echo $WHO; pwd; sleep {marker} & "
                            f"sleep {marker}; echo never", env={"WHO": "me"}, cwd="sub")
    assert process.id
    info = process.wait(timeout=0.5)
    assert info.running and info.exit_code is None
    deadline = time.monotonic() + 10
    while "started" not in process.output().stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    output = process.output()
    assert output.stdout.startswith("started\nme\n") and output.stdout.endswith("/sub\n")
    assert output.info.running
    assert alive(sandbox, marker).count(f"sleep {marker}") == 2  # the shell's two sleeps
    assert process.id in [p.id for p in sandbox.processes() if p.running]
    # Another handle by id (another client could do the same) kills its whole tree.
    killed = sandbox.process(process.id).kill()
    assert (killed.running, killed.exit_code, killed.signal) == (False, 137, "SIGKILL")
    assert alive(sandbox, marker) == ""
    assert "never" not in process.output().stdout


def test_a_background_process_that_ends_reports_its_exit_and_output(sandbox):
    process = sandbox.start("echo out; echo err >&2; exit 5")
    info = process.wait(timeout=30)
    assert (info.running, info.exit_code, info.signal) == (False, 5, None)
    output = process.output()
    assert (output.stdout, output.stderr) == ("out\n", "err\n")
    assert process.info().exit_code == 5


def test_a_background_process_s_own_timeout_kills_it(sandbox):
    process = sandbox.start("sleep 30", timeout=1)
    info = process.wait(timeout=30)
    assert (info.running, info.exit_code, info.signal, info.timed_out) == \
        (False, 137, "SIGKILL", True)


def test_background_processes_are_bounded(sandbox, max_processes):
    marker = 4249201 if sandbox.kind == "sync" else 4249202
    for p in sandbox.processes():
        if p.running:
            sandbox.process(p.id).kill()
    started = [sandbox.start(f"sleep {marker}") for _ in range(max_processes)]
    try:
        with pytest.raises(SandboxRequestError) as caught:
            sandbox.start(f"sleep {marker}")
        assert caught.value.status_code == 429
    finally:
        for process in started:
            process.kill()
    assert gone(sandbox, marker)
