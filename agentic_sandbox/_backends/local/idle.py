"""Idle local sandboxes: paused after their idle timeout without a request, resumed by the next.

Used by LocalSandbox (agentic_sandbox._backends.local.sandbox): its transports are
TrackedTransport and AsyncTrackedTransport, which count every request from its start to the
close of its answer on the sandbox's Activity, and resume the sandbox first when it is
paused. Used by the manager: one IdleWatcher thread per manager pauses the watched sandboxes
whose time has come. Every client of the sandbox goes through these transports, the named
sandbox's holder too (it forwards on the same transport), so any request counts and any
request wakes it.

Pausing is `runsc pause` (the sandbox's gVisor kernel stops every task: no CPU is used, memory
and processes are kept) and resuming `runsc resume`; docs/client.md, "Idle sandboxes", has
the figures behind that choice. A request that finds the sandbox paused resumes it before it
is sent; requests that arrive during a resume wait for that one resume (one lock is held
across it), and a pause happens only while no request is under way, under the same lock.
Pure decision logic (pause_due, seconds_left) is separate from the locking and runsc calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

import httpx2

from agentic_sandbox._aio import in_thread
from agentic_sandbox._backends.channel import (
    AsyncChannelTransport,
    ChannelFactory,
    ChannelTransport,
)

__all__ = ["Activity", "AsyncTrackedTransport", "IdleWatcher", "TrackedTransport", "pause_due",
           "seconds_left"]

log = logging.getLogger(__name__)

# How long the watcher sleeps at most between two looks (a new sandbox wakes it at once).
WATCH_MAX_S: Final = 1.0
WATCH_MIN_S: Final = 0.05
# After a pause that failed, the next try waits this long (the failure is logged each time).
RETRY_S: Final = 30.0


def pause_due(now: float, last: float, in_flight: int, timeout: float | None,
              paused: bool) -> bool:
    """Whether a sandbox is to be paused now: it has an idle timeout, is not paused, no
    request is under way, and the last one ended (or it was handed out) `timeout` ago."""
    return timeout is not None and not paused and in_flight == 0 and now - last >= timeout


def seconds_left(now: float, last: float, in_flight: int, timeout: float | None,
                 paused: bool) -> float | None:
    """Seconds until pause_due may turn true with no further request; None: not before a
    request ends (one is under way), or never (no timeout, or already paused)."""
    if timeout is None or paused or in_flight:
        return None
    return max(0.0, last + timeout - now)


class Activity:
    """One sandbox's requests under way, its last activity, and whether it is paused."""

    def __init__(self, name: str, pause: Callable[[], None], resume: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._pause = pause
        self._resume = resume
        self._clock = clock
        self.timeout: float | None = None  # set when the sandbox is handed out
        self.in_flight = 0
        self.last = clock()
        self.paused = False
        self.closed = False
        self.pauses = 0
        self.resumes = 0  # `runsc resume` runs for requests (one per wake, however many wait)
        self._counts = threading.Lock()  # in_flight and last; held for microseconds
        self._transition = threading.Lock()  # held across a pause or a resume

    def watch(self, timeout: float | None) -> None:
        """Start counting idle time from now, with this timeout (None: never pause)."""
        with self._counts:
            self.timeout = timeout
            self.last = self._clock()

    def begin(self) -> None:
        """A request starts: resume the sandbox first if it is paused (one resume for every
        request that waits meanwhile). Raises httpx2.ConnectError if it cannot be resumed:
        the request was never sent."""
        with self._transition:
            if self.paused and not self.closed:
                started = self._clock()
                self.resumes += 1  # every `runsc resume` run, whether it works or not
                try:
                    self._resume()
                except Exception as exc:
                    log.warning("could not resume local sandbox %s (resume %d): %s", self.name,
                                self.resumes, exc)
                    raise httpx2.ConnectError(
                        f"could not resume the paused sandbox {self.name}: {exc}") from exc
                self.paused = False
                log.info("resumed local sandbox %s in %.0f ms (resume %d)", self.name,
                         (self._clock() - started) * 1e3, self.resumes)
            with self._counts:
                self.in_flight += 1

    def end(self) -> None:
        """A request's answer was closed: the idle time counts from now."""
        with self._counts:
            self.in_flight -= 1
            self.last = self._clock()

    def pause_if_due(self) -> float | None:
        """Pause the sandbox if its time has come; the seconds until it may be due next
        (None: not until a request ends, or never)."""
        if not self._transition.acquire(blocking=False):
            return WATCH_MIN_S  # a resume is under way: look again shortly
        try:
            with self._counts:
                now = self._clock()
                due = not self.closed and pause_due(now, self.last, self.in_flight,
                                                    self.timeout, self.paused)
                if not due:
                    return None if self.closed else seconds_left(
                        now, self.last, self.in_flight, self.timeout, self.paused)
            # No request can start meanwhile: begin() waits for the transition lock.
            try:
                self._pause()
            except Exception as exc:
                log.warning("could not pause the idle sandbox %s: %s", self.name, exc)
                with self._counts:
                    self.last = self._clock() + RETRY_S - (self.timeout or 0)
                return RETRY_S
            self.paused = True
            self.pauses += 1
            log.info("paused local sandbox %s after %.0f s without a request (pause %d)",
                     self.name, now - self.last, self.pauses)
            return None
        finally:
            self._transition.release()

    def close(self) -> None:
        """The sandbox is being removed: no more pauses; resume it if it is paused (a paused
        gVisor kernel would not act on the kill). Never raises."""
        with self._transition:
            self.closed = True
            if self.paused:
                try:
                    self._resume()
                except Exception as exc:  # removal kills it anyway; say why it may be slow
                    log.warning("could not resume sandbox %s before removing it: %s",
                                self.name, exc)
                self.paused = False


class _EndOnClose(httpx2.SyncByteStream):
    """An answer's body that ends its request's activity when it is closed."""

    def __init__(self, stream: httpx2.SyncByteStream, end: Callable[[], None]) -> None:
        self._stream = stream
        self._end: Callable[[], None] | None = end

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            end, self._end = self._end, None
            if end is not None:
                end()


class _AsyncEndOnClose(httpx2.AsyncByteStream):
    def __init__(self, stream: httpx2.AsyncByteStream, end: Callable[[], None]) -> None:
        self._stream = stream
        self._end: Callable[[], None] | None = end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self._stream:
            yield data

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            end, self._end = self._end, None
            if end is not None:
                end()


class TrackedTransport(ChannelTransport):
    """A sandbox's channel transport that counts each request on its Activity."""

    def __init__(self, factory: ChannelFactory, activity: Activity) -> None:
        super().__init__(factory)
        self.activity = activity

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.activity.begin()
        try:
            response = super().handle_request(request)
        except BaseException:
            self.activity.end()
            raise
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = _EndOnClose(response.stream, self.activity.end)
        return response


class AsyncTrackedTransport(AsyncChannelTransport):
    """TrackedTransport for AsyncSandboxClient (a resume runs in a thread)."""

    def __init__(self, factory: ChannelFactory, activity: Activity) -> None:
        super().__init__(factory)
        self.activity = activity

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await in_thread(self.activity.begin)
        try:
            response = await super().handle_async_request(request)
        except BaseException:
            self.activity.end()
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _AsyncEndOnClose(response.stream, self.activity.end)
        return response


class IdleWatcher:
    """One thread per manager that pauses its watched sandboxes once they are due."""

    def __init__(self, name: str) -> None:
        self._watched: dict[int, Activity] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"sandbox-idle-{name}",
                                        daemon=True)
        self._started = False

    def watch(self, activity: Activity, timeout: float | None) -> None:
        activity.watch(timeout)
        if timeout is None:
            return
        with self._lock:
            self._watched[id(activity)] = activity
            if not self._started:
                self._started = True
                self._thread.start()
        self._wake.set()

    def forget(self, activity: Activity) -> None:
        with self._lock:
            self._watched.pop(id(activity), None)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped:
            with self._lock:
                watched = list(self._watched.values())
            wait = WATCH_MAX_S
            for activity in watched:
                left = activity.pause_if_due()
                if left is not None:
                    wait = min(wait, left)
            self._wake.wait(max(WATCH_MIN_S, wait))
            self._wake.clear()
