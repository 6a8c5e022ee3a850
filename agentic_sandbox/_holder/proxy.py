"""The holder's Unix socket server: every request forwarded, as it came, to the runtime.

Used by the holder process (agentic_sandbox._holder.process). Each client connection gets a
thread; each request goes straight on the sandbox Endpoint's transport (the local backend's
channel), its answer streams back piece by piece. Only this user may connect (SO_PEERCRED).
A client that hangs up while its answer is under way is noticed by a watcher, which hangs up
the channel too, so the runtime kills the command. It forwards bytes: it must not interpret
paths or commands (confinement stays the runtime's) and never answers for the sandbox,
except 400/502 when a request cannot be forwarded at all.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import select
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.channel import hang_up
from agentic_sandbox._holder.records import SOCKET
from agentic_sandbox._protocol import CONNECT_TIMEOUT_S

__all__ = ["HolderServer"]

log = logging.getLogger(__name__)

CHUNK: Final = 64 * 1024
# A forwarded request may wait for its command as long as the command runs.
UPSTREAM_TIMEOUT: Final = httpx2.Timeout(None, connect=CONNECT_TIMEOUT_S).as_dict()
# Headers that belong to one hop (RFC 9110 section 7.6.1), and the ones we set ourselves.
HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-authenticate",
                               "proxy-authorization", "te", "trailer", "transfer-encoding",
                               "upgrade", "host", "content-length"})


class _BodyReader:
    """A request body of known length, read from the client as the runtime takes it."""

    def __init__(self, stream: io.BufferedIOBase, length: int) -> None:
        self.stream = stream
        self.remaining = length
        self.length = length

    def __iter__(self) -> Iterator[bytes]:
        while self.remaining > 0:
            data = self.stream.read(min(CHUNK, self.remaining))
            if not data:
                return  # the client hung up: the runtime gets a short body and refuses it
            self.remaining -= len(data)
            yield data


def _dechunk(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """A chunked request body (RFC 9112 section 7.1), chunk by chunk."""
    while True:
        line = stream.readline(1024)
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields: none matter here
            return
        data = stream.read(size)
        stream.readline(3)
        if len(data) != size:
            raise ValueError("the chunked request body ended early")
        yield data


class _HangupWatch:
    """Closes the runtime's side when the client hangs up while its answer is under way.

    The runtime kills a command whose channel closes; through the holder the client's
    hang-up would otherwise only be noticed at the next write, which a silent command never
    makes. A client that sends more bytes instead is not hanging up: watching stops.
    """

    def __init__(self, client: socket.socket, upstream: httpx2.Response) -> None:
        self.client = client
        self.upstream = upstream
        self._wake_read, self._wake_write = os.pipe()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _HangupWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.write(self._wake_write, b"x")
        self.thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        poller.register(self.client, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready:
                return
            try:
                hung_up = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                continue
            except OSError:
                hung_up = True
            if hung_up:
                hang_up(self.upstream)
            return


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the sandbox's runtime, as they are."""

    protocol_version = "HTTP/1.1"
    server: HolderServer

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.command, *args)

    def _answer_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    def _body(self) -> tuple[Any, int | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _dechunk(self.rfile), None
        length = self.headers.get("Content-Length")
        if length is None:
            return None, None
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return _BodyReader(self.rfile, size), size

    def _forward(self) -> None:
        endpoint = self.server.endpoint
        try:
            body, length = self._body()
        except ValueError as exc:
            self._answer_error(400, f"bad request framing: {exc}")
            return
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() not in HOP_BY_HOP}
        headers.update(endpoint.headers)
        if length is not None:
            headers["Content-Length"] = str(length)
        # Straight on the endpoint's transport: the request goes on as it came, with no
        # headers of a client library's own.
        request = httpx2.Request(self.command, endpoint.base_url + self.path, headers=headers,
                                 content=body, extensions={"timeout": UPSTREAM_TIMEOUT})
        try:
            upstream = endpoint.transport.handle_request(request)
        except (httpx2.HTTPError, ValueError) as exc:
            self._answer_error(502, f"the sandbox's runtime did not answer: {exc}")
            return
        if isinstance(body, _BodyReader) and body.remaining:
            self.close_connection = True  # the runtime answered before reading it all
        try:
            with _HangupWatch(self.connection, upstream):
                self._relay(upstream)
        finally:
            upstream.close()

    def _relay(self, upstream: httpx2.Response) -> None:
        length = upstream.headers.get("Content-Length")
        try:
            self.send_response_only(upstream.status_code, upstream.reason_phrase)
            for key, value in upstream.headers.multi_items():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", length)
            self.end_headers()
            # Each piece goes on as it comes: a streamed command's output is not held back.
            for data in upstream.iter_raw():
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if length is None
                                     else data)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, httpx2.HTTPError, httpx2.StreamError) as exc:
            # The client hung up (its command is killed as the runtime's channel closes),
            # or the runtime did: either way this connection cannot carry on.
            log.debug("relay ended: %s", exc)
            self.close_connection = True


class HolderServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The holder's Unix socket server; one thread per client connection."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, directory: Path, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        # A socket path may hold 107 bytes; state folders can be longer: bind through the
        # folder's descriptor instead.
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        address = f"/proc/self/fd/{self._dir_fd}/{SOCKET}"
        super().__init__(address, _ProxyHandler)
        os.chmod(address, 0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Only this user may talk to the sandbox (the folder is 0700 already)."""
        creds = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return bool(uid == os.geteuid())

    def server_close(self) -> None:
        super().server_close()
        os.close(self._dir_fd)
