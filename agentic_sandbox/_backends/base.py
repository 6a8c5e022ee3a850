"""The backend seam: a Backend opens one sandbox and hands back an Endpoint to talk to it.

Called by agentic_sandbox._client (SandboxClient.__enter__/__exit__). An Endpoint carries a
base URL, the headers every request needs (routing, auth) and the requests transport adapter
that reaches it: a plain HTTPAdapter over TCP for Kubernetes, an adapter over a socketpair for
the local runsc backend, an in-memory adapter in unit tests (as httpx's MockTransport).
Backends must not retry requests themselves: replay policy lives in the client only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from requests.adapters import BaseAdapter

__all__ = ["Backend", "Endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """How to reach one open sandbox's runtime API."""

    base_url: str  # e.g. "http://127.0.0.1:40123" (no trailing slash)
    adapter: BaseAdapter  # mounted on the client's session for base_url
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
