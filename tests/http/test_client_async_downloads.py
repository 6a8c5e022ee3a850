"""AsyncSandboxClient's downloads write to this machine's disk off the event loop.

Against the real `sandbox-runtime` under gunicorn over TCP. The local disk is made to stall
(the target's `feed`, where each piece is written, sleeps STALL seconds once every few MiB, as
a disk in writeback or a network file system does) while a heartbeat task on the same loop
notes the longest gap between its ticks. A download that wrote on the loop stops the
heartbeat for a whole stall; one that writes in a worker thread leaves the loop free, so the
longest gap stays far below one stall. The bytes must come out the same, with the same
progress, and a download cancelled in a stall must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic_sandbox import AsyncSandboxClient
from agentic_sandbox._transfer import DirectoryDownload, FileDownload
from tests.http.runtime_fixtures import Runtime, runtime_server
from tests.http.test_client_behaviour_tcp import DirectRuntime

MIB = 1024 * 1024
SIZE = 24 * MIB
STALL_EVERY = 6 * MIB  # 4 stalls in a download of SIZE
STALL = 1.0  # seconds; a loop that writes itself stops this long at each
TICK = 0.01


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    workspace = tmp_path_factory.mktemp("downloads")
    tree = workspace / "big"
    tree.mkdir()
    (tree / "blob").write_bytes(os.urandom(SIZE))
    (tree / "small.txt").write_text("small\n")
    with runtime_server(workspace) as runtime:
        yield runtime


def stalling(monkeypatch: pytest.MonkeyPatch, cls: type[Any]
             ) -> tuple[list[str], threading.Event]:
    """Make `cls.feed` stall once every STALL_EVERY bytes; returns the names of the threads
    it ran on, and an event set when the first stall begins."""
    original: Callable[[Any, bytes], None] = cls.feed
    fed = [0]
    threads: list[str] = []
    stalled = threading.Event()

    def feed(self: Any, data: bytes) -> None:
        before = fed[0]
        fed[0] += len(data)
        threads.append(threading.current_thread().name)
        if before // STALL_EVERY != fed[0] // STALL_EVERY:
            stalled.set()
            time.sleep(STALL)
        original(self, data)

    monkeypatch.setattr(cls, "feed", feed)
    return threads, stalled


async def with_heartbeat(work: Any) -> tuple[Any, float, float]:
    """`work`'s result, the longest gap between heartbeat ticks while it ran, and its time."""
    longest = 0.0
    done = asyncio.Event()

    async def beat() -> None:
        nonlocal longest
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now

    heart = asyncio.create_task(beat())
    started = time.monotonic()
    try:
        result = await work
    finally:
        done.set()
        await heart
    return result, longest, time.monotonic() - started


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def client(server: Runtime) -> AsyncSandboxClient:
    return AsyncSandboxClient("unused", backend=DirectRuntime(server.url), run_timeout=60)


@pytest.mark.parametrize("kind", ["download_dir", "download_file"])
def test_an_async_download_leaves_the_event_loop_free_while_the_disk_stalls(
        server: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    threads, _ = stalling(monkeypatch, DirectoryDownload if kind == "download_dir"
                          else FileDownload)
    heard: list[int] = []

    async def main() -> tuple[Any, float, float]:
        async with client(server) as sandbox:
            if kind == "download_dir":
                work = sandbox.download_dir("big", tmp_path / "got", progress=heard.append)
            else:
                work = sandbox.download_file("big/blob", tmp_path / "blob",
                                             progress=heard.append)
            return await with_heartbeat(work)

    loop_thread = threading.current_thread().name
    result, longest, took = asyncio.run(main())
    blob = tmp_path / ("got/blob" if kind == "download_dir" else "blob")
    assert digest(blob) == digest(server.workspace / "big" / "blob")
    if kind == "download_dir":
        assert (tmp_path / "got" / "small.txt").read_text() == "small\n"
        assert result.files == 2
        assert sum(heard) > SIZE  # every byte of the tar stream, headers too
    else:
        assert result == SIZE
        assert sum(heard) == SIZE
    stalls = SIZE // STALL_EVERY
    assert took >= stalls * STALL, "the disk stalled, so the transfer took at least that long"
    # Writing on the loop, the heartbeat stops for a whole stall (>= 1 s) at each of them.
    assert longest < STALL / 2, (
        f"the event loop was blocked for {longest:.3f} s during a {took:.1f} s download")
    assert loop_thread not in threads, "a piece was written on the event loop's thread"


def test_a_cancelled_async_download_waits_for_the_write_under_way_and_leaves_nothing(
        server: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, stalled = stalling(monkeypatch, FileDownload)
    target = tmp_path / "blob"

    async def main() -> float:
        async with client(server) as sandbox:
            task = asyncio.create_task(sandbox.download_file("big/blob", target))
            while not stalled.is_set():  # a piece is being written, slowly
                await asyncio.sleep(TICK)
            cancelled = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - cancelled

    waited = asyncio.run(main())
    # The write under way was let finish (the partial file stayed open until then) ...
    assert waited > STALL / 4
    # ... and then the partial file was removed: nothing is left behind.
    assert list(tmp_path.iterdir()) == []
