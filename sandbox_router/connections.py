"""Bounds on the router's client connections: how many it holds, and what it does at the bound.

Created by ``app.create_app`` (stored under ``GUARD_KEY``), installed on the aiohttp server
by ``__main__.serve`` and told by the app's dispatch middleware which connections are
serving a request. aiohttp itself accepts every connection and keeps one that never sends a
request head for its ``keepalive_timeout``: a few thousand held connections cost memory, and
at the process's file-descriptor limit ``accept`` fails, so real clients wait in the backlog
while asyncio logs every failed accept (security finding 25). At ``limit`` open connections
a new one closes the connection that has been idle longest (open, no request being served:
a keep-alive connection between requests, or a client still "sending" its head); only when
every other connection is serving a request is the new one answered 503 and closed. So idle
and slow-header connections can delay nobody, and the number of descriptors and the memory
they take are bounded.

It must not close a connection while the router serves a request on it, and it reads no
private state of aiohttp: it wraps the server's ``connection_made``/``connection_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from sandbox_common.contract import NOT_FORWARDED_HEADER

# Descriptors kept free for everything that is not a client connection (the listening
# socket, the token file, API-server reads, logs).
RESERVED_FDS = 64

_BODY = json.dumps({"error": "router has too many connections busy; try again"}).encode()
# Written straight to a connection that never got to send a request: no request, no handler.
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Retry-After: 1\r\n" + NOT_FORWARDED_HEADER.encode() + b": true\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n"
           + _BODY)


def descriptor_budget(wanted: int, nofile: int) -> tuple[int, int]:
    """(connection limit, listen backlog) that fit `nofile` descriptors.

    Each client connection may pair with one to its sandbox; RESERVED_FDS stay free; and
    asyncio accepts up to `backlog` connections in one go before the guard sees any, a few
    rounds of which may be in flight, so three backlogs stay free too. Past the limit
    ``accept`` would fail with EMFILE, which stalls every new client and logs each attempt.
    """
    backlog = max(16, min(1024, nofile // 8))
    return max(1, min(wanted, (nofile - RESERVED_FDS - 3 * backlog) // 2)), backlog


class ConnectionGuard:
    """At most `limit` client connections; at the bound the longest-idle one makes room."""

    def __init__(self, limit: int, on_close: Callable[[str], None] | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._on_close = on_close or (lambda reason: None)
        # Open connections, least recently active first (a request's end moves one last).
        self._open: OrderedDict[Any, asyncio.BaseTransport] = OrderedDict()
        self._busy: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def install(self, server: web.Server) -> None:
        """Watch `server`'s connections (aiohttp calls these two for each one)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self.closed(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign, assignment]

    def opened(self, handler: Any, transport: asyncio.BaseTransport) -> None:
        self._open[handler] = transport
        if len(self._open) <= self.limit:
            return
        for other in self._open:
            if other is not handler and other not in self._busy:
                self._drop(other, "evicted_idle")
                return
        # Every other connection is serving a request: this one waits for nothing.
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(REFUSAL)
        self._drop(handler, "refused")

    def closed(self, handler: Any) -> None:
        self._open.pop(handler, None)
        self._busy.pop(handler, None)

    @contextlib.contextmanager
    def serving(self, handler: Any) -> Iterator[None]:
        """While a request is served on `handler`'s connection it is never closed to make
        room; when the request ends the connection counts as the most recently active."""
        self._busy[handler] = self._busy.get(handler, 0) + 1
        try:
            yield
        finally:
            left = self._busy.pop(handler, 1) - 1
            if left > 0:
                self._busy[handler] = left
            if handler in self._open:
                self._open.move_to_end(handler)

    def _drop(self, handler: Any, reason: str) -> None:
        self._open.pop(handler, None)
        self._on_close(reason)
        force_close = getattr(handler, "force_close", None)
        if force_close is not None:
            force_close()  # closes the transport once buffered bytes (a refusal) are out
