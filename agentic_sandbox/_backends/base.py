"""The backend seam: a Backend opens one sandbox and hands back an Endpoint to talk to it.

Called by agentic_sandbox._client (SandboxClient.open/close). An Endpoint carries a base URL,
the headers every request needs (routing, auth) and the httpx transport that reaches the
sandbox: httpx's HTTPTransport over TCP for Kubernetes, a ChannelTransport over a socketpair
for the local runsc backend (agentic_sandbox._backends.channel), an in-memory transport in
unit tests (as httpx's MockTransport). The client owns the transport once open() returned
it, and closes it. Backends must not retry requests themselves: replay policy lives in the
client only (agentic_sandbox._protocol.replay_allowed).
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
    transport: httpx2.BaseTransport  # every request to base_url goes through it
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
