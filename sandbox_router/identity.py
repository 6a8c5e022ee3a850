"""Which Sandbox uid a request means, and reads of the API server that are new enough to say.

Used by ``resolve.Resolver``. Two small pieces, pure asyncio (no Kubernetes client here):

- ``ConnectionMemory``: for one client connection, the uid each sandbox name was confirmed to
  mean (bounded). ``proxy`` keeps one per keep-alive connection.
- ``Reads``: coalesces direct reads of one Sandbox. A read answers a request only if it was
  *started after the request arrived*: a client that saw its Sandbox Ready before sending has
  the API server's word for it, and only a consistent read made later is sure to see at least
  that. Requests that arrive while a read is under way wait for it to end and share the next
  one, so one name costs at most one read in flight at a time.

It must not cache a read's answer across requests (``resolve`` decides what to keep) nor
order events by wall-clock time: arrivals and reads are ordered by one counter, taken on the
event loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")

# Names one connection remembers; the oldest is forgotten first (it is then confirmed again).
CONNECTION_NAMES = 64


class ConnectionMemory:
    """The uid each sandbox name was confirmed to mean on one client connection."""

    __slots__ = ("_uids",)

    def __init__(self) -> None:
        self._uids: dict[Key, str] = {}

    def get(self, key: Key) -> str | None:
        return self._uids.get(key)

    def bind(self, key: Key, uid: str) -> None:
        self._uids.pop(key, None)
        self._uids[key] = uid
        if len(self._uids) > CONNECTION_NAMES:
            self._uids.pop(next(iter(self._uids)))

    def __len__(self) -> int:
        return len(self._uids)


class _Flight(Generic[T]):
    __slots__ = ("future", "started")

    def __init__(self, started: int, future: asyncio.Future[T]) -> None:
        self.started = started
        self.future = future


class Reads(Generic[T]):
    """Single-flight reads per key, each answering only requests that arrived before it began.

    `arrival()` stamps a request; `read(key, arrived, fetch)` returns `fetch(key)`'s answer
    from a read that began after `arrived`, starting one if none is under way.
    """

    def __init__(self) -> None:
        self._clock = itertools.count()
        self._flights: dict[Key, _Flight[T]] = {}
        self.started = 0  # reads begun, for tests and metrics

    def arrival(self) -> int:
        return next(self._clock)

    async def read(self, key: Key, arrived: int,
                   fetch: Callable[[Key], Awaitable[T]]) -> T:
        while True:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._begin(key, fetch)
            elif flight.started < arrived:
                # Begun before this request arrived: its answer may predate what the client
                # saw. Let it end (the first waiter to wake begins the next read).
                await asyncio.wait((flight.future,))
                continue
            # Shielded: one caller giving up (its client left) must not cancel the others'.
            return await asyncio.shield(flight.future)

    def _begin(self, key: Key, fetch: Callable[[Key], Awaitable[T]]) -> _Flight[T]:
        flight: _Flight[T] = _Flight(next(self._clock), asyncio.ensure_future(fetch(key)))
        self._flights[key] = flight
        self.started += 1

        def done(future: asyncio.Future[T]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not future.cancelled():
                future.exception()  # retrieved: a failed read with no waiter left is not "lost"

        flight.future.add_done_callback(done)
        return flight
