"""Idle local sandboxes: paused after their idle timeout without a request, stopped (workspace
kept) after STOP_FACTOR times that, and woken by the next request.

Used by LocalSandbox (agentic_sandbox._backends.local.sandbox): its transports are
TrackedTransport and AsyncTrackedTransport, which count every request from its start to the
close of its answer on the sandbox's Activity, and wake the sandbox first when it is
paused or stopped. Used by the manager: one IdleWatcher thread per manager pauses the
watched sandboxes, and later stops them, when their time has come. Every client of the
sandbox goes through these transports, the named sandbox's holder too (it forwards on the
same transport), so any request counts and any request wakes it.

Pausing is `runsc pause` (the sandbox's gVisor kernel stops every task: no CPU is used, memory
and processes are kept) and resuming `runsc resume`; docs/client.md, "Idle local sandboxes", has
the figures behind that choice. A pause keeps the sandbox's memory, so a sandbox left idle for
STOP_FACTOR times its idle timeout is stopped: its gVisor sandbox ends (memory and processes
freed), its workspace, bundle and id are kept, as a suspended Kubernetes Sandbox keeps its
PVC. A request that finds the sandbox paused resumes it before it is sent, one that finds it
stopped starts it again on the kept workspace; requests that arrive meanwhile wait for that
one resume or start (one lock is held across it), and a pause or stop happens only while no
request is under way, under the same lock. Pure decision logic (next_step, seconds_left) is
separate from the locking and runsc calls. It must not choose a timeout (the backend passes
the option's or the template's), remove a sandbox or its workspace (the manager does), or
send a request of its own.
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

__all__ = ["PAUSED", "RUNNING", "STOPPED", "STOP_FACTOR", "Activity", "AsyncTrackedTransport",
           "IdleWatcher", "TrackedTransport", "next_step", "seconds_left"]

log = logging.getLogger(__name__)

# How long the watcher sleeps at most between two looks (a new sandbox wakes it at once).
WATCH_MAX_S: Final = 1.0
WATCH_MIN_S: Final = 0.05
# After a pause that failed, the next try waits this long (the failure is logged each time).
RETRY_S: Final = 30.0
# A sandbox idle for this many idle timeouts is stopped (it was paused after one). A pause
# wakes in ~70 ms but holds the sandbox's memory; a fresh start frees it and wakes in ~1 s.
# Ten timeouts keep the fast wake for an agent that comes back within a multiple of its own
# idle timeout, and bound what an abandoned sandbox holds to that long.
STOP_FACTOR: Final = 10

# A sandbox's states (Activity.state).
RUNNING: Final = "running"
PAUSED: Final = "paused"  # `runsc pause`: no CPU, memory and processes held
STOPPED: Final = "stopped"  # the gVisor sandbox ended; workspace, bundle and id kept


def _step_at(last: float, timeout: float | None, state: str) -> tuple[str, float] | None:
    """The next step for an idle sandbox in `state`, and the time it is due."""
    if timeout is None:
        return None
    if state == RUNNING:
        return "pause", last + timeout
    if state == PAUSED:
        return "stop", last + STOP_FACTOR * timeout
    return None


def next_step(now: float, last: float, in_flight: int, timeout: float | None,
              state: str) -> str | None:
    """What to do now with a sandbox: "pause" once no request is under way and the last one
    ended (or it was handed out) `timeout` ago; "stop" once paused and that was STOP_FACTOR
    times `timeout` ago; else None (no timeout, a request under way, not yet, stopped)."""
    step = _step_at(last, timeout, state)
    return step[0] if step is not None and in_flight == 0 and now >= step[1] else None


def seconds_left(now: float, last: float, in_flight: int, timeout: float | None,
                 state: str) -> float | None:
    """Seconds until next_step may name a step with no further request; None: not before a
    request ends (one is under way), or never (no timeout, or stopped)."""
    step = _step_at(last, timeout, state)
    if step is None or in_flight:
        return None
    return max(0.0, step[1] - now)


class Activity:
    """One sandbox's requests under way, its last activity, and its state (running, paused,
    stopped)."""

    def __init__(self, name: str, pause: Callable[[], None], resume: Callable[[], None],
                 stop: Callable[[], None], start: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._steps = {"pause": pause, "stop": stop}
        self._resume = resume
        self._start = start
        self._clock = clock
        self.timeout: float | None = None  # set when the sandbox is handed out
        self.in_flight = 0
        self.last = clock()
        self.state = RUNNING
        self.closed = False
        self.pauses = 0
        self.resumes = 0  # `runsc resume` runs for requests (one per wake, however many wait)
        self.stops = 0
        self.starts = 0  # starts of a stopped sandbox for requests (one per wake)
        self._counts = threading.Lock()  # in_flight and last; held for microseconds
        self._transition = threading.Lock()  # held across a pause, stop, resume or start

    @property
    def paused(self) -> bool:
        return self.state == PAUSED

    def watch(self, timeout: float | None) -> None:
        """Start counting idle time from now, with this timeout (None: never pause)."""
        with self._counts:
            self.timeout = timeout
            self.last = self._clock()

    def begin(self) -> None:
        """A request starts: resume the sandbox first if it is paused, start it again if it
        is stopped (one resume or start for every request that waits meanwhile). Raises
        httpx2.ConnectError if it cannot be woken: the request was never sent."""
        with self._transition:
            if self.state != RUNNING and not self.closed:
                self._wake()
            with self._counts:
                self.in_flight += 1

    def _wake(self) -> None:
        started = self._clock()
        if self.state == PAUSED:
            self.resumes += 1  # every `runsc resume` run, whether it works or not
            what, count, wake = "resume", self.resumes, self._resume
        else:
            self.starts += 1
            what, count, wake = "start", self.starts, self._start
        try:
            wake()
        except Exception as exc:
            log.warning("could not %s local sandbox %s (%s %d): %s", what, self.name, what,
                        count, exc)
            raise httpx2.ConnectError(
                f"could not {what} the {self.state} sandbox {self.name}: {exc}") from exc
        self.state = RUNNING
        log.info("%s local sandbox %s in %.0f ms (%s %d)",
                 "resumed" if what == "resume" else "started the stopped", self.name,
                 (self._clock() - started) * 1e3, what, count)

    def end(self) -> None:
        """A request's answer was closed: the idle time counts from now."""
        with self._counts:
            self.in_flight -= 1
            self.last = self._clock()

    def step_if_due(self) -> float | None:
        """Pause or stop the sandbox if its time has come; the seconds until the next step
        may be due (None: not until a request ends, or never)."""
        if not self._transition.acquire(blocking=False):
            return WATCH_MIN_S  # a resume or start is under way: look again shortly
        try:
            with self._counts:
                now = self._clock()
                step = None if self.closed else next_step(now, self.last, self.in_flight,
                                                          self.timeout, self.state)
                if step is None:
                    return None if self.closed else seconds_left(
                        now, self.last, self.in_flight, self.timeout, self.state)
            # No request can start meanwhile: begin() waits for the transition lock.
            try:
                self._steps[step]()
            except Exception as exc:
                # Retried in RETRY_S: a stop that failed leaves the sandbox paused (still
                # woken by a request), a pause that failed leaves it running.
                log.warning("could not %s the idle sandbox %s: %s", step, self.name, exc)
                with self._counts:
                    factor = 1 if step == "pause" else STOP_FACTOR
                    self.last = self._clock() + RETRY_S - factor * (self.timeout or 0)
                return RETRY_S
            if step == "pause":
                self.state, self.pauses = PAUSED, self.pauses + 1
            else:
                self.state, self.stops = STOPPED, self.stops + 1
            log.info("%s local sandbox %s after %.0f s without a request (%s %d)",
                     "paused" if step == "pause" else "stopped", self.name, now - self.last,
                     step, self.pauses if step == "pause" else self.stops)
            return seconds_left(now, self.last, 0, self.timeout, self.state)
        finally:
            self._transition.release()

    def close(self) -> None:
        """The sandbox is being removed: no more pauses or stops; resume it if it is paused
        (a paused gVisor kernel would not act on the kill). Never raises."""
        with self._transition:
            self.closed = True
            if self.state == PAUSED:
                try:
                    self._resume()
                except Exception as exc:  # removal kills it anyway; say why it may be slow
                    log.warning("could not resume sandbox %s before removing it: %s",
                                self.name, exc)
                self.state = RUNNING


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
    """One thread per manager that pauses (then stops) its watched sandboxes once due."""

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
                left = activity.step_if_due()
                if left is not None:
                    wait = min(wait, left)
            self._wake.wait(max(WATCH_MIN_S, wait))
            self._wake.clear()
