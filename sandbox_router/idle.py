"""Idle sandboxes, the router's part: report activity, and wake a suspended Sandbox on request.

Used by ``proxy.Forwarder`` (``begin``/``end`` around each forwarded request) and by
``resolve.Resolver`` (``wake`` for a request whose Sandbox sleeps). The hooks decide: a Sandbox
with an idle timeout suspends when the router has reported no request for that long, and
resumes when the router writes the wake token (docs/controller.md). The router only writes two
annotations on the Sandbox, with the uid as a precondition; it never touches pods.

- Activity: the time of the last request (its end, or now while one is in flight) goes into
  ``agents.x-k8s.io/last-activity``, at most once per interval per Sandbox (a quarter of its
  idle timeout, at most ``activity_interval``), by a background task: requests cost no API
  call. Sandboxes without an idle timeout are never written.
- Wake: the token is the lastTransitionTime of the Suspended condition the router saw, written
  into ``agents.x-k8s.io/wake`` only while the Sandbox is unchanged since (resourceVersion
  precondition). Writing the same token twice is one wake, so router replicas cannot wake a
  Sandbox twice, and within one router concurrent requests share one wake (single flight per
  uid) and wait for Ready up to ``wake_timeout``.

It must not dial anything, decide a suspension, or wake a Sandbox that is not suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sandbox_common.contract import LAST_ACTIVITY_ANNOTATION as ACTIVITY_ANNOTATION
from sandbox_common.contract import WAKE_ANNOTATION
from sandbox_router.metrics import Metrics
from sandbox_router.records import SandboxRecord, _revision
from sandbox_router.resolve import (
    NotServable,
    SandboxReplaced,
    Unconfirmed,
    UnknownSandbox,
    WakeTimedOut,
)
from sandbox_router.sources import Conflict, Source, SourceUnavailable

log = logging.getLogger(__name__)

# How often the background task looks for activity to report, and a waiting request at the
# cache (seconds).
TICK = 0.25
POLL = 0.02
# Never report one Sandbox's activity more often than this (seconds), whatever its timeout.
MIN_INTERVAL = 0.5


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Activity:
    record: SandboxRecord
    interval: float
    in_flight: int = 0
    last: float = 0.0  # wall time of the last request (its end)
    reported: float = 0.0  # wall time written last
    written_at: float = 0.0  # monotonic time of that write


class Idle:
    """Activity reports and wakes for one router (see the module docstring)."""

    def __init__(self, source: Source, metrics: Metrics, *, wake_timeout: float,
                 activity_interval: float, wall: Callable[[], float] = time.time) -> None:
        self.source = source
        self.metrics = metrics
        self.wake_timeout = wake_timeout
        self.activity_interval = activity_interval
        self._wall = wall
        self._activity: dict[str, _Activity] = {}  # by uid
        self._wakes: dict[str, asyncio.Future[SandboxRecord]] = {}  # by uid
        self._task: asyncio.Task[None] | None = None

    # ---- activity ------------------------------------------------------------------------

    def begin(self, record: SandboxRecord) -> None:
        if not record.idle_timeout or not record.uid:
            return
        entry = self._activity.get(record.uid)
        if entry is None:
            interval = max(MIN_INTERVAL, min(self.activity_interval, record.idle_timeout / 4))
            entry = self._activity[record.uid] = _Activity(record, interval)
        entry.record = record
        entry.in_flight += 1
        entry.last = self._wall()

    def end(self, record: SandboxRecord) -> None:
        entry = self._activity.get(record.uid)
        if entry is not None:
            entry.in_flight = max(0, entry.in_flight - 1)
            entry.last = self._wall()

    async def report(self) -> None:
        """Write what is due: one pass of the background task."""
        now, mono = self._wall(), time.monotonic()
        due = []
        for uid, entry in list(self._activity.items()):
            last = now if entry.in_flight else entry.last
            if int(last) <= int(entry.reported):  # the annotation has seconds
                if not entry.in_flight and mono - entry.written_at > entry.interval:
                    self._activity.pop(uid, None)  # reported and quiet: forget it
                continue
            if mono - entry.written_at >= entry.interval:
                due.append((entry, last))
        for entry, last in due:
            entry.written_at = mono
            try:
                await self.source.annotate(entry.record, {ACTIVITY_ANNOTATION: rfc3339(last)})
            except (Conflict, SourceUnavailable) as exc:
                self.metrics.activity.labels("error").inc()
                log.info("activity report failed", extra={
                    "namespace": entry.record.namespace, "sandbox": entry.record.name,
                    "error": str(exc)})
            else:
                entry.reported = last
                self.metrics.activity.labels("ok").inc()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.report()
            except Exception:  # a bug here must not end the reports for good
                log.exception("activity reports failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- wakes ---------------------------------------------------------------------------

    async def wake(self, record: SandboxRecord) -> SandboxRecord:
        """The Sandbox of `record` (suspended, or waking) once Ready: woken by one write
        shared by every request that waits for it. Raises WakeTimedOut past wake_timeout."""
        flight = self._wakes.get(record.uid)
        if flight is None:
            flight = self._wakes[record.uid] = asyncio.ensure_future(self._wake(record))

            def done(future: asyncio.Future[SandboxRecord]) -> None:
                if self._wakes.get(record.uid) is flight:
                    del self._wakes[record.uid]
                if not future.cancelled():
                    future.exception()  # retrieved even when no waiter is left

            flight.add_done_callback(done)
        # Shielded: one caller giving up must not cancel the wake the others wait for.
        return await asyncio.shield(flight)

    async def _wake(self, record: SandboxRecord) -> SandboxRecord:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wake_timeout
        where = f"sandbox {record.namespace}/{record.name}"
        written = ""
        while True:
            if not record.unservable:
                self.metrics.wakes.labels("ready").inc()
                return record
            if not record.wakeable:
                raise NotServable(f"{where} {record.unservable}")
            token = record.suspended_since
            if token and record.wake != token and written != token:
                try:
                    await self.source.annotate(record, {WAKE_ANNOTATION: token},
                                               if_unchanged=True)
                except Conflict:
                    record = await self._read(record)  # it changed: look again
                    continue
                except SourceUnavailable as exc:
                    self.metrics.wakes.labels("failed").inc()
                    raise Unconfirmed(f"cannot wake {where}: {exc}") from None
                written = token
                self.metrics.wakes.labels("written").inc()
                log.info("waking sandbox", extra={"namespace": record.namespace,
                                                  "sandbox": record.name})
            if loop.time() >= deadline:
                self.metrics.wakes.labels("timeout").inc()
                raise WakeTimedOut(f"{where} is waking up and was not ready within "
                                   f"{self.wake_timeout:g}s; try again")
            await asyncio.sleep(POLL)
            seen = self.source.lookup(record.namespace, record.name)
            if seen is None or seen.uid != record.uid:
                record = await self._read(record)
            elif (_revision(seen.resource_version) or 0) >= (
                    _revision(record.resource_version) or 0):
                record = seen

    async def _read(self, record: SandboxRecord) -> SandboxRecord:
        """The Sandbox as the API server has it now, which must still be the same uid."""
        where = f"sandbox {record.namespace}/{record.name}"
        try:
            fresh = await self.source.fetch(record.namespace, record.name)
        except SourceUnavailable as exc:
            raise Unconfirmed(f"cannot confirm {where} with the API server: {exc}") from None
        if fresh is None:
            raise UnknownSandbox(f"no sandbox {record.namespace}/{record.name}")
        if fresh.uid != record.uid:
            raise SandboxReplaced(f"{where} is uid {fresh.uid} now, not {record.uid}")
        return fresh

