"""Resolution: from (namespace, sandbox name, port[, uid]) to the addresses of that sandbox's pod.

Called by ``proxy`` for each request through ``Resolver.resolve``, which asks a ``Source``
(``sources``: the Kubernetes watch cache, or a static file) what it knows.

A watch cache lags: after a Sandbox is deleted and made again under the same name, the cache
may still hold the old one, whose pod keeps serving while it terminates. So a record carries
the Sandbox's uid, and the Resolver forwards only to the uid the request means: the one its
``X-Sandbox-UID`` names, else the one a direct (consistent) read from the API server returned,
begun after the request arrived (or, with the opt-in ``connection`` memory, after the client's
connection first named the sandbox: ``identity``; docs/router.md states the guarantee of each).
It refuses a Sandbox whose record says it is not Ready or is being deleted, except one that
sleeps (idle): a request for it waits for the `waker` (``idle``) to wake it.

What it must not do: connect to anything (``proxy`` does, only to a ``Target`` from here),
take an address or host from a caller, or hand out an address the ``AddressPolicy`` refuses.
A target is only ever a Sandbox's own pod address (``status.podIPs``, or the A records of its
own headless Service ``status.serviceFQDN`` when no pod IP is published yet), on a port that
the Sandbox's pod template declares.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandbox_router.addresses import AddressPolicy, AddressRefused
from sandbox_router.headers import Route
from sandbox_router.identity import ConnectionMemory, Reads
from sandbox_router.records import MAX_FETCHED, SandboxRecord
from sandbox_router.sources import Source, SourceUnavailable

log = logging.getLogger(__name__)

# Seconds a client should wait before asking again after a 503 from here.
RETRY_AFTER_SECONDS = 1
# A Sandbox a read found not Ready is read again for a request at most this often (seconds):
# the watch may lag behind its turning Ready, and clients retrying must not each cost a read.
NOT_READY_RECHECK_SECONDS = 0.25


class ResolveError(Exception):
    """Base of every refusal; `status` is the HTTP status the router answers, with a
    Retry-After header when `retry_after` is set."""

    status = 502
    retry_after: int | None = None


class UnknownSandbox(ResolveError):
    """No Sandbox of that name in that namespace (as far as the source knows)."""

    status = 404


class UndeclaredPort(ResolveError):
    """The Sandbox exists but its pod template declares no such TCP containerPort."""

    status = 404


class NoAddress(ResolveError):
    """The Sandbox exists but publishes no usable pod address (yet)."""

    status = 502


class SandboxReplaced(ResolveError):
    """X-Sandbox-UID names a Sandbox that no longer holds that name (gone, or the name now
    belongs to another uid), as a consistent read from the API server says. Final."""

    status = 409


class NotServable(ResolveError):
    """The Sandbox's record says it is not Ready, or it is being deleted: never dialled."""

    status = 503
    retry_after = RETRY_AFTER_SECONDS


class WakeTimedOut(ResolveError):
    """A suspended Sandbox was woken but did not turn Ready within wake_timeout."""

    status = 503
    retry_after = RETRY_AFTER_SECONDS


class Unconfirmed(ResolveError):
    """The uid a request needs could not be read from the API server (unreachable, slow,
    refused): nothing is forwarded on a guess."""

    status = 503
    retry_after = RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class Target:
    """Where a request goes: policy-checked addresses (tried in order) and one port."""

    addresses: tuple[str, ...]
    port: int
    record: SandboxRecord


class Resolver:
    """Source + policy: the only way ``proxy`` gets an address to connect to.

    With a live source, a request is forwarded only to the Sandbox uid it means: the one its
    X-Sandbox-UID names, else the one a read begun after the request arrived returned (for
    every request when no `connection` memory is given, as by default; else once per
    connection and name, and again whenever the cache shows another uid).
    `on_read(reason, result)` is told of every direct read (metrics).
    """

    def __init__(self, source: Source, policy: AddressPolicy, *,
                 cluster_domain: str = "cluster.local",
                 on_read: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 waker: Callable[[SandboxRecord], Awaitable[SandboxRecord]] | None = None
                 ) -> None:
        self.source = source
        self.waker = waker  # idle.Idle.wake: a request for a suspended Sandbox waits for it
        self.policy = policy
        self.cluster_domain = cluster_domain
        self.reads: Reads[SandboxRecord | None] = Reads()
        self._on_read = on_read
        self._clock = clock
        # When a read last found each name not servable (see NOT_READY_RECHECK_SECONDS).
        self._not_ready_at: dict[tuple[str, str], float] = {}

    async def resolve(self, route: Route, *,
                      connection: ConnectionMemory | None = None) -> Target:
        arrived = self.reads.arrival()
        key = (route.namespace, route.name)
        record = self.source.lookup(*key)
        if self.source.live:
            record = await self._identify(route, key, record, arrived, connection)
        elif record is None:
            raise UnknownSandbox(f"no sandbox {route.namespace}/{route.name}")
        elif route.uid is not None and record.uid != route.uid:
            raise SandboxReplaced(f"sandbox {route.namespace}/{route.name} is not uid "
                                  f"{route.uid}")
        if record.unservable and self.waker is not None and record.wakeable:
            record = await self.waker(record)
        if record.unservable:
            raise NotServable(f"sandbox {route.namespace}/{route.name} {record.unservable}")
        if route.port not in record.ports:
            raise UndeclaredPort(
                f"sandbox {route.namespace}/{route.name} declares no port {route.port}")
        candidates = record.addresses or await self._service_addresses(record)
        allowed, refused = [], []
        for address in candidates:
            try:
                self.policy.check(address)
            except AddressRefused as exc:
                refused.append(str(exc))
            else:
                allowed.append(address)
        if refused:
            log.warning("sandbox address refused", extra={
                "namespace": record.namespace, "sandbox": record.name, "refused": refused})
        if not allowed:
            reason = "address refused by policy" if refused else "no pod address yet"
            raise NoAddress(f"sandbox {route.namespace}/{route.name}: {reason}")
        return Target(addresses=tuple(allowed), port=route.port, record=record)

    async def _identify(self, route: Route, key: tuple[str, str],
                        record: SandboxRecord | None, arrived: int,
                        connection: ConnectionMemory | None) -> SandboxRecord:
        """The record of the uid this request means, read from the API server when the
        cache cannot vouch for it; or the refusal."""
        expected = route.uid if route.uid is not None else (
            connection.get(key) if connection is not None else None)
        if record is not None and expected is not None and record.uid == expected:
            checked = self._not_ready_at.get(key)
            if not record.unservable or (
                    checked is not None and self._clock() - checked < NOT_READY_RECHECK_SECONDS
            ) or (record.wakeable and self.waker is not None):
                # A sleeping Sandbox is woken, not read: the wake itself checks that the
                # Sandbox is unchanged (and reads it when it is not).
                return record
            why = "not_ready"  # the watch may lag behind a Sandbox that turned Ready
        elif route.uid is not None:
            why = "uid"
        else:
            why = "connection" if connection is not None else "request"
        where = f"sandbox {route.namespace}/{route.name}"
        try:
            fresh = await self.reads.read(key, arrived, self._fetch)
        except SourceUnavailable as exc:
            self._count(why, "error")
            raise Unconfirmed(f"cannot confirm {where} with the API server: {exc}") from None
        self._count(why, "absent" if fresh is None else "found")
        self._not_ready_at.pop(key, None)
        if fresh is not None and fresh.unservable:
            self._not_ready_at[key] = self._clock()
            while len(self._not_ready_at) > MAX_FETCHED:
                self._not_ready_at.pop(next(iter(self._not_ready_at)), None)
        if route.uid is not None:
            if fresh is None:
                raise SandboxReplaced(f"{where} (uid {route.uid}) no longer exists")
            if fresh.uid != route.uid:
                raise SandboxReplaced(f"{where} is uid {fresh.uid} now, not {route.uid}")
        elif fresh is None:
            raise UnknownSandbox(f"no sandbox {route.namespace}/{route.name}")
        elif connection is not None:
            connection.bind(key, fresh.uid)
        return fresh

    async def _fetch(self, key: tuple[str, str]) -> SandboxRecord | None:
        return await self.source.fetch(*key)

    def _count(self, why: str, result: str) -> None:
        if self._on_read is not None:
            self._on_read(why, result)

    async def _service_addresses(self, record: SandboxRecord) -> list[str]:
        """A records of the sandbox's own headless Service, only under its own exact name."""
        expected = f"{record.name}.{record.namespace}.svc.{self.cluster_domain}"
        if record.service_fqdn.rstrip(".") != expected:
            return []
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                expected + ".", None, type=socket.SOCK_STREAM)
        except OSError:
            return []
        found: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in found:
                found.append(address)
        return found
