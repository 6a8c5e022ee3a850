"""Awaiting blocking work from asyncio: without the default executor's bound (`in_thread`),
and to its very end even if the awaiting task is cancelled (`off_loop`, `ended`).

Used by AsyncSandboxClient (a backend's open() and close(): runsc, the Kubernetes API; the
local files of downloads and uploads) and by the async channel transport (a channel's factory
may start a `runsc exec`). Nothing here knows about sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ended", "in_thread", "off_loop"]

T = TypeVar("T")


async def in_thread(function: Callable[[], T]) -> T:
    """`function()` in a thread of its own, awaited from the running loop.

    Not asyncio.to_thread: its default executor has min(32, CPUs + 4) threads, so twenty
    sandboxes opening at once from one loop would start six at a time. If the awaiting task
    is cancelled, the thread still runs to its end (a thread cannot be stopped); callers
    that acquire something in it release it themselves (AsyncSandboxClient.open)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value = function()
        except BaseException as exc:  # handed to the awaiting task
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (value, None)
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="agentic-sandbox-io", daemon=True).start()
    return await future



async def ended(future: asyncio.Future[Any]) -> None:
    """Wait until `future` (work running in a thread) is done, even if the awaiting task is
    cancelled meanwhile: a thread cannot be stopped, and whatever it writes to must not be
    closed under it. The cancellation is passed on once the work ended; the work's own
    outcome stays in `future`."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread (the loop's default executor, for short blocking
    work such as a file write), awaited to its end (`ended`); its result or error."""
    future = asyncio.get_running_loop().run_in_executor(None, function, *args)
    await ended(future)
    return future.result()
