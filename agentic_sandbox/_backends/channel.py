"""HTTP over a channel: an httpx transport whose connections are handed out, never dialled.

Used by the local backend (each sandbox's socketpair, agentic_sandbox._backends.local.sandbox)
and by named local sandboxes (the holder's Unix socket, agentic_sandbox._holder). A channel
is a connected stream socket that a factory returns whenever the transport needs a new
connection. ChannelTransport is httpx's own HTTP/1.1 transport (httpcore's connection pool,
its h11 state machine and its error mapping) with one change: its network backend calls
the factory instead of opening a TCP connection. A SandboxError from the factory becomes
httpx's ConnectError, so the client knows the request never left this process.

One idle connection is kept, for ever (a new one costs a `runsc exec`); a second
concurrent request gets a channel of its own, closed once there are two idle. At most
MAX_CHANNELS are open at once: a further request waits for one (within its own timeout), since
each channel past the first is a runtime of its own in the sandbox, about 70-90 of its 1024
host threads under runsc's ptrace platform (16 concurrent calls once ended the sandbox). No
retries here: replay is the client's decision alone (agentic_sandbox._protocol).

AsyncChannelTransport is the same over httpcore's async pool, for AsyncSandboxClient: the
channel is a non-blocking socket read and written through the running asyncio loop
(`sock_recv`, `sock_sendall`), and the factory runs in a thread (it may start a `runsc
exec`). With `owns_channels=False` a transport never closes a channel: the local backend
checks a new sandbox answers over its first channel and then hands that same channel, clean
between two requests, to whichever client (sync or async) asks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable, Iterable
from typing import Any, Final

import httpcore2
import httpx2

from agentic_sandbox._aio import in_thread
from agentic_sandbox._exceptions import SandboxError

__all__ = ["CHANNEL_URL", "MAX_CHANNELS", "AsyncChannelTransport", "ChannelFactory",
           "ChannelTransport", "hang_up"]

# The base URL of every channel endpoint: the host name is never resolved.
CHANNEL_URL: Final = "http://sandbox.local"
# Channels (so runtimes, in a local sandbox) one transport holds at once; see above.
MAX_CHANNELS: Final = 6

ChannelFactory = Callable[[], socket.socket]


def _extra_info(sock: socket.socket, info: str) -> Any:
    """What httpcore asks a stream about: its socket, and whether an idle one is readable."""
    if info == "socket":
        return sock
    if info == "is_readable":
        return _readable(sock)
    return None


def _readable(sock: socket.socket) -> bool:
    """httpcore's `is_readable`: an idle connection with something to read has been closed
    (or spoken to out of turn) by the other side, and is dropped instead of reused."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class ChannelStream(httpcore2.NetworkStream):
    """One channel as httpcore's network stream (HTTP/1.1 in clear, no TLS)."""

    def __init__(self, sock: socket.socket, *, owned: bool = True) -> None:
        self._sock = sock
        self._owned = owned

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
        if self._owned:
            self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        return _extra_info(self._sock, info)


class _ChannelNetwork(httpcore2.NetworkBackend):
    """httpcore's network backend: 'connecting' takes a channel from the factory."""

    def __init__(self, factory: ChannelFactory, owns_channels: bool) -> None:
        self._factory = factory
        self._owns = owns_channels

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        try:
            return ChannelStream(self._factory(), owned=self._owns)
        except SandboxError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc


def _pool_options() -> dict[str, Any]:
    # One idle channel kept for ever (a new one may cost a `runsc exec`), never a retry.
    return {"max_connections": MAX_CHANNELS, "max_keepalive_connections": 1,
            "keepalive_expiry": None, "retries": 0}


class ChannelTransport(httpx2.HTTPTransport):
    """httpx's HTTP transport over channels from `factory` (see the module docstring)."""

    def __init__(self, factory: ChannelFactory, *, owns_channels: bool = True) -> None:
        # Not HTTPTransport.__init__: it builds a TCP pool (and a TLS context) that would
        # never be used. HTTPTransport's request handling and error mapping work on
        # whatever pool `_pool` holds.
        self._pool = httpcore2.ConnectionPool(
            network_backend=_ChannelNetwork(factory, owns_channels), **_pool_options())


class AsyncChannelStream(httpcore2.AsyncNetworkStream):
    """One channel as httpcore's async network stream, on the running asyncio loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            if timeout is None:
                return await loop.sock_recv(self._sock, max_bytes)
            return await asyncio.wait_for(loop.sock_recv(self._sock, max_bytes), timeout)
        except TimeoutError as exc:
            raise httpcore2.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        loop = asyncio.get_running_loop()
        try:
            if timeout is None:
                await loop.sock_sendall(self._sock, buffer)
            else:
                await asyncio.wait_for(loop.sock_sendall(self._sock, buffer), timeout)
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        return _extra_info(self._sock, info)


class _AsyncChannelNetwork(httpcore2.AsyncNetworkBackend):
    """httpcore's async network backend: the factory runs in a thread (it may start a
    process); its SandboxError becomes ConnectError, as in the sync backend."""

    def __init__(self, factory: ChannelFactory) -> None:
        self._factory = factory

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore2.AsyncNetworkStream:
        try:
            return AsyncChannelStream(await in_thread(self._factory))
        except SandboxError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncChannelTransport(httpx2.AsyncHTTPTransport):
    """httpx's async HTTP transport over channels from `factory` (module docstring)."""

    def __init__(self, factory: ChannelFactory) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            network_backend=_AsyncChannelNetwork(factory), **_pool_options())


def hang_up(response: httpx2.Response) -> None:
    """Shut down the channel carrying `response` from any thread: a read blocked on it
    ends at once (and the runtime on the other side sees the hang-up)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
