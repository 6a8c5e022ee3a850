"""HTTP over a channel: an httpx transport whose connections are handed out, never dialled.

Used by the local backend (each sandbox's socketpair, agentic_sandbox._backends.local.sandbox)
and by named local sandboxes (the holder's Unix socket, agentic_sandbox._holder). A channel
is a connected stream socket that a factory returns whenever the transport needs a new
connection. ChannelTransport is httpx's own HTTP/1.1 transport (httpcore's connection pool,
its h11 state machine and its error mapping) with one change: its network backend calls
the factory instead of opening a TCP connection. A SandboxError from the factory becomes
httpx's ConnectError, so the client knows the request never left this process.

One idle connection is kept, for ever (a new one costs a `runsc exec`); a second
concurrent request gets a channel of its own, closed once there are two idle. No retries
here: replay is the client's decision alone (agentic_sandbox._protocol). An
AsyncChannelTransport will be the same over httpcore's async pool, with the socket wrapped
by anyio.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable, Iterable
from typing import Any, Final

import httpcore2
import httpx2

from agentic_sandbox._exceptions import SandboxError

__all__ = ["CHANNEL_URL", "ChannelFactory", "ChannelTransport", "hang_up"]

# The base URL of every channel endpoint: the host name is never resolved.
CHANNEL_URL: Final = "http://sandbox.local"

ChannelFactory = Callable[[], socket.socket]


class ChannelStream(httpcore2.NetworkStream):
    """One channel as httpcore's network stream (HTTP/1.1 in clear, no TLS)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore2.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # An idle connection with something to read has been closed (or spoken to out
            # of turn) by the other side: httpcore then drops it instead of reusing it.
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class _ChannelNetwork(httpcore2.NetworkBackend):
    """httpcore's network backend: 'connecting' takes a channel from the factory."""

    def __init__(self, factory: ChannelFactory) -> None:
        self._factory = factory

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        try:
            return ChannelStream(self._factory())
        except SandboxError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc


class ChannelTransport(httpx2.HTTPTransport):
    """httpx's HTTP transport over channels from `factory` (see the module docstring)."""

    def __init__(self, factory: ChannelFactory) -> None:
        # Not HTTPTransport.__init__: it builds a TCP pool (and a TLS context) that would
        # never be used. HTTPTransport's request handling and error mapping work on
        # whatever pool `_pool` holds.
        self._pool = httpcore2.ConnectionPool(
            network_backend=_ChannelNetwork(factory), max_connections=None,
            max_keepalive_connections=1, keepalive_expiry=None, retries=0)


def hang_up(response: httpx2.Response) -> None:
    """Shut down the channel carrying `response` from any thread: a read blocked on it
    ends at once (and the runtime on the other side sees the hang-up)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
