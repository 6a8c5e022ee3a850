"""HeadFirstWorker: gunicorn's gthread worker, but a thread only serves complete request heads.

Loaded by gunicorn from hooks/gunicorn_conf.py and sandbox_runtime/gunicorn_conf.py
(`worker_class`). Written against gunicorn 27's gthread worker (the version pinned in
pyproject.toml), whose main loop owns a selector and hands connections to a thread pool.

Why: gthread gives a new connection to a pool thread at once, and the thread waits there up
to 5 s for a first byte, then blocks in recv() until the request head is complete. Eight
connections that send nothing held the hook server's four threads (per worker) for 4.5 s
each; clients sending half a header held them until they went away. Here the worker's main
loop reads every request head itself, without blocking, from the connection's first byte
to its blank line (or to the largest head gunicorn would accept), and only then gives the
connection to a thread, with the bytes read so far handed to gunicorn's parser. A
connection waits for its head at most HEAD_TIMEOUT_S once it sent a first byte, and at most
`keepalive` seconds before that (a new connection, or a kept-alive one between requests);
then it is closed. Bodies are still read by the thread (the app decides how much to read).

It also answers gunicorn's own errors (bad request line 400, URI too long 414, header
fields too large 431, unsupported transfer coding 501, an app crash before its answer
500...) with the servers' documented JSON body `{"error": "..."}` instead of HTML, keeping
gunicorn's status codes, logs and access lines.

It must not block the main loop (no blocking recv, no TLS handshake there: with TLS or
HTTP/2 prior knowledge configured, connections take gthread's own path unchanged).
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

HEAD_TIMEOUT_S = 15.0
READ_SIZE = 65536
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
MAX_ERROR_DETAIL = 200


def head_complete(data: bytes | bytearray) -> bool:
    """Whether `data` holds a whole request head (request line and headers, blank line)."""
    return any(end in data for end in HEAD_ENDS)


class _Capture:
    """Stands in for the client socket while gunicorn writes its HTML error: keeps the
    status line, so the answer can be rewritten as JSON with the same status."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> tuple[int, str]:
        line = self.data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        try:
            return int(line[1]), line[2] if len(line) > 2 else ""
        except (IndexError, ValueError):
            return 500, "Internal Server Error"


def json_error(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer with the JSON body; the connection closes after it."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class HeadFirstWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with request heads read by the main loop (see the module docstring)."""

    def init_process(self) -> None:
        self.heads: dict[TConn, float] = {}  # connection -> when it is given up
        cfg = self.cfg
        # The largest head gunicorn's parser accepts: past it, the parser answers 414/431.
        self.max_head = (cfg.limit_request_line + 2
                         + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 2)
        self.head_first = not cfg.is_ssl and cfg.http2_cleartext not in (
            "prior-knowledge", "both")
        super().init_process()

    # -- connections waiting for their request head ------------------------------------------

    def accept(self, listener: Any) -> None:
        if not self.head_first:
            super().accept(listener)
            return
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, addr, listener.getsockname())  # non-blocking
        conn.head = bytearray()
        self._await_head(conn, time.monotonic() + self.cfg.keepalive)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has bytes: read its next head here, not in a thread."""
        if not self.head_first:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        conn.head = bytearray()
        self.heads[conn] = time.monotonic() + HEAD_TIMEOUT_S
        self._on_head_readable(conn, client, registered=False)

    def enqueue_req(self, conn: TConn) -> None:
        """Pipelined bytes left by the previous request are only given to a thread once
        they hold a whole head; otherwise the head is awaited here."""
        parser = conn.parser
        if self.head_first and conn.initialized and parser is not None:
            pending = parser.unreader.buf.getvalue()
            if pending and not head_complete(pending):
                conn.head = bytearray(parser.unreader.take_buffered())
                conn.sock.setblocking(False)
                self._await_head(conn, time.monotonic() + HEAD_TIMEOUT_S)
                return
        super().enqueue_req(conn)

    def _await_head(self, conn: TConn, give_up_at: float) -> None:
        self.heads[conn] = give_up_at
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: TConn, client: Any, registered: bool = True) -> None:
        """Read what the connection has; hand it to a thread once its head is complete.
        `registered`: whether the poller watches it (a kept-alive connection that just
        became readable is read first, and only watched if its head is still partial)."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"":
            self._drop(conn)  # the client left (unregistering what is not: suppressed)
            return
        if data:
            if not conn.head:
                self.heads[conn] = time.monotonic() + HEAD_TIMEOUT_S  # the head's clock
            conn.head += data
        if data and (head_complete(conn.head) or len(conn.head) > self.max_head):
            if registered:
                self.poller.unregister(conn.sock)
            del self.heads[conn]
            conn.init()  # the parser (no TLS, no HTTP/2 sniffing: nothing blocks here)
            conn.parser.unreader.unread(bytes(conn.head))
            conn.head = None
            conn.data_ready = True
            super().enqueue_req(conn)
        elif not registered:
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_head_readable, conn))

    def _drop(self, conn: TConn) -> None:
        del self.heads[conn]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's expiry of kept-alive connections, plus heads that took too long (all
        of them when the worker stops)."""
        super().murder_keepalived(force)
        now = time.monotonic()
        for conn, give_up_at in list(self.heads.items()):
            if force or not self.alive or give_up_at <= now:
                self._drop(conn)

    # -- gunicorn's own error answers, as JSON -----------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)  # its status, logs and access line
        status, reason = capture.status()
        if status >= 500:
            message = "internal error"
        else:
            detail = str(exc).strip()[:MAX_ERROR_DETAIL]
            message = f"{reason.lower()}: {detail}" if detail else reason.lower()
        try:
            util.write_nonblock(client, json_error(status, reason, message))
        except Exception:
            self.log.debug("Failed to send error message.")


__all__ = ["HeadFirstWorker", "head_complete", "json_error"]
