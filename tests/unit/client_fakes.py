"""A fake Backend for the client's unit tests: requests answered in memory, no sockets.

FakeTransport plays the transport (as httpx's MockTransport): a handler gets each request
(as a Sent record) and returns (status, body), or (status, body, headers), or raises an httpx
exception; every request is recorded with its timeouts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from agentic_sandbox import Endpoint


@dataclass(frozen=True)
class Sent:
    """One request as it reached the transport."""

    method: str
    path_url: str  # the path (and query) exactly as sent, still percent-encoded
    headers: httpx2.Headers
    body: bytes


Handler = Callable[[Sent], tuple[Any, ...]]


class FakeTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Both a sync and an async transport: the same handler answers either client."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Sent] = []
        self.timeouts: list[dict[str, float | None]] = []
        self.closed = False

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sent = Sent(request.method, request.url.raw_path.decode("ascii"), request.headers,
                    request.read())
        self.requests.append(sent)
        self.timeouts.append(request.extensions.get("timeout", {}))
        status, body, *more = self.handler(sent)
        extra = more[0] if more else {}
        if isinstance(body, bytes):
            return httpx2.Response(status, content=body,
                                   headers={"Content-Type": "application/octet-stream", **extra})
        return httpx2.Response(status, content=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json", **extra})

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        response = self.handle_request(request)
        return httpx2.Response(response.status_code, content=response.content,
                               headers=response.headers)

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class FakeBackend:
    name = "fake"

    def __init__(self, handler: Handler, *, headers: dict[str, str] | None = None,
                 fail_open: BaseException | None = None) -> None:
        self.transport = FakeTransport(handler)
        self.headers = headers or {}
        self.fail_open = fail_open
        self.opened = 0
        self.closed = 0

    def open(self) -> Endpoint:
        self.opened += 1
        if self.fail_open is not None:
            raise self.fail_open
        return Endpoint(base_url="http://fake.sandbox", transport=self.transport,
                        async_transport=self.transport, headers=self.headers,
                        sandbox_name="fake-1")

    def close(self) -> None:
        self.closed += 1
