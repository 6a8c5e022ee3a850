"""The backend seam: a Backend opens one sandbox and hands back an Endpoint to talk to it.

Called by agentic_sandbox._client (SandboxClient and AsyncSandboxClient, open/close). An
Endpoint carries a base URL, the headers every request needs (routing, auth) and the httpx
transports that reach the sandbox, one sync and one async: httpx's HTTPTransport and
AsyncHTTPTransport over TCP for Kubernetes, a ChannelTransport and an AsyncChannelTransport
over socketpairs for the local runsc backend (agentic_sandbox._backends.channel), in-memory
transports in unit tests (as httpx's MockTransport). The client owns both transports once
open() returned them, uses the one that fits it, and closes both. Backends must not retry
requests themselves: replay policy lives in the client only
(agentic_sandbox._protocol.replay_allowed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx2

__all__ = ["Backend", "Endpoint", "request_once"]


@dataclass(frozen=True)
class Endpoint:
    """How to reach one open sandbox's runtime API."""

    base_url: str  # e.g. "http://127.0.0.1:40123" (no trailing slash)
    transport: httpx2.BaseTransport  # every request of a SandboxClient goes through it
    # ... and of an AsyncSandboxClient through this one (None: the backend has no async IO)
    async_transport: httpx2.AsyncBaseTransport | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    sandbox_name: str = ""  # the Sandbox (Kubernetes) or runsc container id (local)
    description: str = ""  # for error messages: "router tunnel on 127.0.0.1:40123", ...


@runtime_checkable
class Backend(Protocol):
    """Opens one sandbox and releases it. `close()` must be safe to call more than once and
    after a failed or partial `open()`."""

    name: str

    def open(self) -> Endpoint:
        """Get a ready sandbox; raise a SandboxError when that is impossible."""
        ...

    def close(self) -> None:
        """Release everything open() acquired (claim, tunnel, runsc container, workspace)."""
        ...


def request_once(transport: httpx2.BaseTransport, method: str, url: str, *,
                 timeout: httpx2.Timeout, headers: Mapping[str, str] | None = None,
                 json: Any = None) -> httpx2.Response:
    """One request straight on a transport, its answer read: how a backend checks its
    sandbox answers before handing out the Endpoint. Raises httpx's TransportError."""
    request = httpx2.Request(method, url, headers=headers, json=json,
                             extensions={"timeout": timeout.as_dict()})
    response = transport.handle_request(request)
    try:
        response.read()
    finally:
        response.close()
    return response
