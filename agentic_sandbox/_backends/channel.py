"""HTTP over a channel: a connected socket handed out by a factory, never dialled.

Used by the local backend (a sandbox's socketpair, agentic_sandbox._backends.local.sandbox)
and by named local sandboxes (the holder's Unix socket, agentic_sandbox._holder). The
factory gives a fresh channel whenever the transport needs a connection; a SandboxError
from it means no connection was made (so a request cannot have left). No retries here:
replay is the client's decision alone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from agentic_sandbox._exceptions import SandboxError

__all__ = ["CHANNEL_URL", "ChannelAdapter"]

# The base URL of every channel endpoint: the host name is never resolved.
CHANNEL_URL: Final = "http://sandbox.local"


class _ChannelConnection(HTTPConnection):
    """A urllib3 connection whose 'socket' comes from the sandbox, not from connect()."""

    def __init__(self, *args: Any, channel_factory: Callable[[], socket.socket],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_factory = channel_factory

    def _new_conn(self) -> socket.socket:
        try:
            return self._channel_factory()
        except SandboxError as exc:
            raise urllib3.exceptions.NewConnectionError(self, str(exc)) from exc


class _ChannelPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _ChannelConnection  # type: ignore[assignment]


class ChannelAdapter(HTTPAdapter):
    """A requests adapter that sends every request over a sandbox's stdio channel.

    One pooled connection; a second concurrent request gets its own channel (a second
    runtime via `runsc exec`) that is closed after use. No retries: replay is the client's
    decision alone.
    """

    def __init__(self, channel_factory: Callable[[], socket.socket]) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self._pool = _ChannelPool("sandbox.local", 80, maxsize=1, block=False, retries=False,
                                  channel_factory=channel_factory)

    def get_connection_with_tls_context(self, request: requests.PreparedRequest,
                                        verify: bool | str | None,
                                        proxies: Mapping[str, str] | None = None,
                                        cert: Any = None) -> urllib3.HTTPConnectionPool:
        return self._pool

    def get_connection(self, url: str | bytes,
                       proxies: Mapping[str, str] | None = None) -> urllib3.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()
