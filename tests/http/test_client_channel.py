"""The client's channel transport against the real `sandbox-runtime --stdio`, on the host.

The local backend reaches its runtime through ChannelTransport (httpx over a socketpair whose
other end is the runtime's stdin and stdout; agentic_sandbox._backends.channel). Here the
factory starts the same runtime on the host instead of through `runsc exec`, so the
transport's connection handling and the client's replay rule meet a real HTTP/1.1 peer:
one channel kept for every call, a second one for a concurrent call, a dead idle channel
replaced, a POST sent again only when its channel could not even be opened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agentic_sandbox import Endpoint, SandboxClient, SandboxConnectionError
from agentic_sandbox._backends.channel import CHANNEL_URL, ChannelTransport
from testbed.support import script


class HostRuntimes:
    """A Backend whose channels are `sandbox-runtime --stdio` processes on this host."""

    name = "host-stdio"

    def __init__(self, workspace: Path, *, refuse_first: bool = False) -> None:
        self.workspace = workspace
        self.refuse_first = refuse_first
        self.asked = 0
        self.processes: list[subprocess.Popen[bytes]] = []

    def channel(self) -> socket.socket:
        self.asked += 1
        if self.refuse_first and self.asked == 1:
            raise SandboxConnectionError("no channel this time")
        ours, theirs = socket.socketpair()
        self.processes.append(subprocess.Popen(
            [script("sandbox-runtime"), "--stdio", "--base-dir", str(self.workspace)],
            stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.DEVNULL))
        theirs.close()
        return ours

    def open(self) -> Endpoint:
        return Endpoint(base_url=CHANNEL_URL, transport=ChannelTransport(self.channel))

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]


@pytest.fixture
def runtimes(tmp_path):
    backend = HostRuntimes(tmp_path)
    yield backend
    backend.close()


def test_every_call_goes_over_one_kept_channel(runtimes):
    with SandboxClient("tpl", backend=runtimes) as sandbox:
        for i in range(20):
            sandbox.write(f"f{i}", b"x")
            assert sandbox.exists(f"f{i}")
        time.sleep(6)  # longer than httpx's default keep-alive expiry (5 s)
        assert sandbox.run("echo still").stdout == "still\n"
        assert sandbox.read("f3") == b"x"
    assert runtimes.asked == 1


def test_a_concurrent_call_gets_its_own_channel_and_one_stays(runtimes):
    with SandboxClient("tpl", backend=runtimes) as sandbox:
        assert sandbox.health()
        slow: dict[str, str] = {}
        thread = threading.Thread(
            target=lambda: slow.update(out=sandbox.run("sleep 1; echo slow").stdout))
        thread.start()
        deadline = time.monotonic() + 20
        while runtimes.asked < 2 and time.monotonic() < deadline:
            assert sandbox.run("echo fast").stdout == "fast\n"
        thread.join(30)
        assert slow == {"out": "slow\n"} and runtimes.asked == 2
        sandbox.exists("x")  # both idle now: one is kept, the other closed
        deadline = time.monotonic() + 20
        while len(runtimes.running()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(runtimes.running()) == 1  # the closed channel's runtime saw EOF, ended
        assert sandbox.run("echo again").stdout == "again\n"
        assert runtimes.asked == 2


def test_a_dead_idle_channel_is_replaced(runtimes):
    with SandboxClient("tpl", backend=runtimes) as sandbox:
        sandbox.write("kept", b"1")
        first = runtimes.processes[0]
        first.kill()
        first.wait()
        assert sandbox.run("cat kept").stdout == "1"
    assert runtimes.asked == 2


def test_a_post_whose_channel_could_not_be_opened_is_sent_again(tmp_path):
    runtimes = HostRuntimes(tmp_path, refuse_first=True)
    try:
        with SandboxClient("tpl", backend=runtimes) as sandbox:
            assert sandbox.run("echo ran >> count").ok
        assert (tmp_path / "count").read_text() == "ran\n"
        assert runtimes.asked == 2
    finally:
        runtimes.close()


def test_a_post_whose_channel_broke_is_never_sent_again(runtimes, tmp_path):
    result: dict[str, BaseException] = {}
    with SandboxClient("tpl", backend=runtimes) as sandbox:
        def run() -> None:
            try:
                sandbox.run("echo ran >> count; echo $$ > pid; exec sleep 30", timeout=60)
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 20
        while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text():
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        pid = int((tmp_path / "pid").read_text())
        try:
            runtimes.processes[0].kill()  # the sandbox's runtime dies mid-command
            thread.join(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert isinstance(result.get("error"), SandboxConnectionError), result
    assert (tmp_path / "count").read_text() == "ran\n"  # ran once: never replayed
    assert runtimes.asked == 1
