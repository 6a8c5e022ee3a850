"""A fake Backend for the client's unit tests: requests answered in memory, no sockets.

FakeAdapter plays the transport (as httpx's MockTransport): a handler gets each prepared
request and returns (status, body) or raises a requests exception; every request is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from agentic_sandbox import Endpoint

Handler = Callable[[requests.PreparedRequest], tuple[int, Any]]


class FakeAdapter(BaseAdapter):
    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[requests.PreparedRequest] = []
        self.timeouts: list[Any] = []
        self.closed = False

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.requests.append(request)
        self.timeouts.append(timeout)
        status, body = self.handler(request)
        response = requests.Response()
        response.status_code = status
        response.request = request
        response.url = request.url
        if isinstance(body, bytes):
            raw = body
            content_type = "application/octet-stream"
        else:
            raw = json.dumps(body).encode()
            content_type = "application/json"
        response.headers = CaseInsensitiveDict({"Content-Type": content_type})
        response._content = raw
        response.raw = _Raw(raw)
        return response

    def close(self) -> None:
        self.closed = True


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1, **_: Any) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out

    def stream(self, n: int, decode_content: bool = True):
        while self.data:
            yield self.read(n or 1024)

    def close(self) -> None:
        pass


class FakeBackend:
    name = "fake"

    def __init__(self, handler: Handler, *, headers: dict[str, str] | None = None,
                 fail_open: BaseException | None = None) -> None:
        self.adapter = FakeAdapter(handler)
        self.headers = headers or {}
        self.fail_open = fail_open
        self.opened = 0
        self.closed = 0

    def open(self) -> Endpoint:
        self.opened += 1
        if self.fail_open is not None:
            raise self.fail_open
        return Endpoint(base_url="http://fake.sandbox", adapter=self.adapter,
                        headers=self.headers, sandbox_name="fake-1")

    def close(self) -> None:
        self.closed += 1
