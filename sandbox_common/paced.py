"""PacedSocket: the socket a HeadFirstWorker thread serves one request through, and the paces.

Used by sandbox_common.serving (the gunicorn worker of the runtime and the hooks), which
hands it to gunicorn's parser and Response. It bounds how long a thread waits on its client,
reading a request's body and writing its answer (docs/runtime.md, *Serving*). It must not
block past a pace, or change what is read or written.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time
from typing import Any

GRACE_S = 15.0  # a request's first byte to its pace's start; the longest stall allowed
MIN_RATE = 32 * 1024  # bytes/s a request must average once past GRACE_S
SEND_GRACE_S = 5.0  # an answer's longest wait for its client to take more, at its start
SEND_MIN_RATE = 32 * 1024  # each byte the client takes allows 1/SEND_MIN_RATE s more waiting
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
SENDFILE_BLOCK = 1 << 30  # bytes asked of one os.sendfile (socket.sendfile's own block)


def pace(started: float, received: int) -> float:
    """When a request that began at `started` and sent `received` bytes is given up."""
    return started + GRACE_S + received / MIN_RATE


class PacedSocket:
    """The socket a thread serves a request through (gunicorn's parser and its Response
    hold it). Reading: each recv waits at most until the request's pace runs out (module
    docstring), then the socket is shut for reading and the body reads as ended. Writing
    (sendall, and sendfile for downloads): the answer's send pace. The time spent waiting
    for the client to take more may not pass SEND_GRACE_S plus one second per SEND_MIN_RATE
    bytes it took (sent and no longer queued in the kernel); past it the write fails as a
    broken pipe, the thread is freed and the connection is reset."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.started = time.monotonic()
        self.received = 0
        self.sent = 0  # bytes of the current answer the client took
        self.waited = 0.0  # seconds the current answer waited for the client to take more

    def restart(self, started: float, received: int) -> None:
        """A new request on the connection: its first byte's time, bytes already read."""
        self.started, self.received = started, received
        self.sent, self.waited = 0, 0.0

    def give_up_at(self) -> float:
        return pace(self.started, self.received)

    def recv(self, size: int) -> bytes:
        wait = self.give_up_at() - time.monotonic()
        ready = select.poll()
        ready.register(self.sock, select.POLLIN)
        if wait <= 0 or not ready.poll(wait * 1000):
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
            return b""
        data = self.sock.recv(size)
        self.received += len(data)
        return data

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                sent = self.sock.send(view, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self._wait_writable()
                continue
            self.sent += sent
            view = view[sent:]

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """socket.sendfile's contract (file position left after what was sent), with the
        send pace: os.sendfile on the socket made non-blocking for the call. A file that
        ends before `count` fails the write (EPIPE), which ends the connection."""
        source = file.fileno()
        if count is None:
            count = max(0, os.fstat(source).st_size - offset)
        total = 0
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while total < count:
                try:
                    sent = os.sendfile(self.sock.fileno(), source, offset + total,
                                       min(count - total, SENDFILE_BLOCK))
                except (BlockingIOError, InterruptedError):
                    self._wait_writable()
                    continue
                if sent == 0:
                    # The file shrank after its length was declared: the answer can never
                    # be whole, so the connection must end (kept alive, its client would
                    # wait for the missing bytes until a timeout).
                    raise OSError(errno.EPIPE, "the file ended before its declared length")
                total += sent
                self.sent += sent
        finally:
            self.sock.settimeout(timeout)
            file.seek(offset + total)
        return total

    def taken(self) -> int:
        """Bytes of the answer the client took: those sent, less those still in the send
        queue (several MiB may sit there for a client that reads nothing)."""
        queued = array.array("i", [0])
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, queued)
        return max(0, self.sent - queued[0])

    def _wait_writable(self) -> None:
        """Wait until the client takes more of the answer, within its send pace."""
        allowed = SEND_GRACE_S + self.taken() / SEND_MIN_RATE - self.waited
        ready = select.poll()
        ready.register(self.sock, select.POLLOUT)
        began = time.monotonic()
        events = ready.poll(allowed * 1000) if allowed > 0 else []
        self.waited += time.monotonic() - began
        if not events:
            # Reset on close: a FIN would wait behind the queued bytes, at the client's pace.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            raise OSError(errno.EPIPE, "the client did not take its answer within its pace")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


__all__ = ["GRACE_S", "MIN_RATE", "SEND_GRACE_S", "SEND_MIN_RATE", "PacedSocket", "pace"]
