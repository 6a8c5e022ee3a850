"""The client's behaviour (tests/client_behaviour.py) in a local gVisor sandbox.

The same behaviours as over TCP (tests/http/test_client_behaviour_tcp.py), with
SandboxClient and with AsyncSandboxClient, through runsc and the socketpair channel: each
client kind gets a sandbox of its own. Then what only the local backend has: the async
client's channels (the first runtime serves it, no `runsc exec`), and twenty sandboxes
driven from one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentic_sandbox import AsyncSandboxClient
from tests.client_behaviour import *  # noqa: F403 (the behaviours are the tests)
from tests.client_behaviour import Driver, close_driver, open_driver
from tests.dataplane.conftest import TEMPLATE, containers

MAX_PROCESSES = 16  # the runtime's default


@pytest.fixture(scope="module", params=["sync", "async"])
def sandbox(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[Driver]:
    driver = open_driver(request.param, lambda cls: cls(TEMPLATE, backend="local",
                                                        state_dir=state_dir))
    yield driver
    close_driver(driver)


@pytest.fixture
def max_processes() -> int:
    return MAX_PROCESSES


RUNTIMES = ("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | "
            "grep -c '^[^ ]*python[^ ]* .*sandbox_runtime/launch.py' || true")


def test_the_async_client_is_served_by_the_sandbox_s_first_runtime(state_dir):
    """Its first channel is the one the sandbox started with (before: the readiness check
    kept it in the sync transport, and the async client's first call paid a `runsc
    exec` for a second runtime)."""
    async def main() -> tuple[str, str]:
        async with AsyncSandboxClient(TEMPLATE, backend="local",
                                      state_dir=state_dir) as sandbox:
            first = (await sandbox.run(RUNTIMES)).stdout.strip()
            again = (await sandbox.run(RUNTIMES)).stdout.strip()
            return first, again
    assert asyncio.run(main()) == ("1", "1")


def test_twenty_sandboxes_from_one_event_loop(state_dir):
    """Twenty AsyncSandboxClients opened, used and closed concurrently on one loop: every
    answer is its own sandbox's, and nothing is left behind."""
    count = 20

    names: list[str] = []

    async def one(i: int) -> tuple[int, str, bytes, str, int | None, str]:
        async with AsyncSandboxClient(TEMPLATE, backend="local", state_dir=state_dir,
                                      sandbox_ready_timeout=600) as sandbox:
            names.append(sandbox.sandbox_name)
            await sandbox.write("me.txt", f"sandbox {i}")
            ran, listed = await asyncio.gather(
                sandbox.run(f"cat me.txt; echo; echo {i} >&2; exit {i % 7}"),
                sandbox.list("."))
            async with sandbox.stream(f"echo streamed {i}") as stream:
                streamed = "".join([chunk.data async for chunk in stream])
            process = await sandbox.start(f"echo bg {i}")
            ended = await process.wait(timeout=60)
            output = await process.output()
            return (ran.exit_code, ran.stdout + ran.stderr, await sandbox.read("me.txt"),
                    streamed, ended.exit_code, output.stdout + ",".join(
                        e.name for e in listed))

    async def main() -> list[tuple[int, str, bytes, str, int | None, str]]:
        return await asyncio.gather(*(one(i) for i in range(count)))

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    for i, (code, out, read, streamed, bg_code, bg_out) in enumerate(results):
        assert code == i % 7
        assert out == f"sandbox {i}\n{i}\n"
        assert read == f"sandbox {i}".encode()
        assert streamed == f"streamed {i}\n"
        assert (bg_code, bg_out) == (0, f"bg {i}\nme.txt")
    print(f"20 sandboxes from one loop: {elapsed:.1f} s")
    assert len(set(names)) == count
    assert set(names) & set(containers(state_dir)) == set()
