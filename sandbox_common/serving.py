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
connection to a thread, with the bytes read so far handed to gunicorn's parser.

Bodies too: a request's body (Content-Length or chunked) is read by the main loop as well,
up to LOOP_BODY_MAX bytes per request and LOOP_BUDGET bytes for all waiting requests of the
worker, so a thread is only given a request it can serve without waiting for the client
(`Expect: 100-continue` is answered here, once). Before, four clients that sent a head
with `Content-Length` and no body held the hook server's four threads until they left.
A body larger than LOOP_BODY_MAX (an upload) is read by the thread, through PacedSocket.

One pace for every request, in the loop and in the thread: from its first byte, it must
have arrived after GRACE_S plus one second per MIN_RATE bytes received so far (a stall of
GRACE_S, or a trickle, ends it). A waiting head or body past its pace is closed; a body
past its pace in a thread reads as ended there (the app answers 400, the connection
closes). Before its first byte a connection waits at most `keepalive` seconds (a new one,
or a kept-alive one between requests), then it is closed.

Answers have a pace too: a thread writes every answer (gunicorn's sendall, and sendfile for
downloads) through PacedSocket, without blocking; the time it waits for the client to take
more may not pass SEND_GRACE_S plus one second per SEND_MIN_RATE bytes taken, else the
connection is reset and the thread freed. Before, a client that read nothing (or a byte now
and then) held a thread for as long as it liked.

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
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from sandbox_common.paced import GRACE_S, PacedSocket, pace

LOOP_BODY_MAX = 1024 * 1024  # body bytes a waiting request may buffer in the main loop
LOOP_BUDGET = 64 * 1024 * 1024  # all waiting requests of one worker together
READ_SIZE = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
MAX_ERROR_DETAIL = 200


def head_end(data: bytes | bytearray) -> int | None:
    """Where the request head in `data` ends (after its blank line), or None if it does not."""
    ends = [found + len(end) for end in HEAD_ENDS if (found := data.find(end)) >= 0]
    return min(ends) if ends else None


@dataclass(frozen=True)
class Framing:
    """How a request head says its body ends, as far as the main loop needs to know.
    `length` None and not `chunked`: nothing to wait for (no body, or a head gunicorn
    refuses without reading one)."""

    length: int | None = None
    chunked: bool = False
    expects_continue: bool = False


def framing(head: bytes | bytearray) -> Framing:
    """Read the body framing of a complete request head the way gunicorn's parser does;
    anything it refuses (two lengths, a length not in digits, a transfer coding not ending
    in chunked, chunked with a length or on HTTP/1.0) is `Framing()`: its 400 needs no body."""
    lines = bytes(head).replace(b"\r\n", b"\n").split(b"\n")
    http11 = lines[0].rstrip().endswith(b"HTTP/1.1")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expect = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",")]
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
    if codings:
        if (codings[-1] != b"chunked" or codings.count(b"chunked") > 1 or lengths
                or not http11 or not set(codings) <= KNOWN_CODINGS):
            return Framing()
        return Framing(chunked=True, expects_continue=expect and http11)
    if len(lengths) != 1 or not lengths[0].isdigit():
        return Framing()
    length = int(lengths[0])
    return Framing(length=length, expects_continue=expect and http11 and length > 0)


KNOWN_CODINGS = {b"chunked", b"identity", b"gzip", b"deflate", b"compress"}  # gunicorn's


class ChunkScan:
    """Where a chunked body being received stands, read as gunicorn's ChunkedReader reads
    it: `feed()` says MORE (not ended yet), DONE (last chunk and trailers received, or a
    line too long to judge here: gunicorn decides) or BAD (a chunk size that is not hex, or
    chunk data not followed by CRLF: no body can follow, the worker answers 400). It
    remembers where it stopped, so each call scans only what arrived since."""

    MORE, DONE, BAD = "more", "done", "bad"
    MAX_LINE = 4096

    def __init__(self, start: int) -> None:
        self.pos = start  # the next chunk-size line, or the trailers once `last`
        self.last = False
        self.state = self.MORE

    def feed(self, data: bytes | bytearray) -> str:
        """How the chunked body in `data` (the whole request so far) stands; once DONE or
        BAD, it stays so."""
        if self.state == self.MORE:
            self.state = self._scan(data)
        return self.state

    def _scan(self, data: bytes | bytearray) -> str:
        while True:
            newline = data.find(b"\r\n", self.pos, self.pos + self.MAX_LINE)
            if newline < 0:
                return self.DONE if len(data) - self.pos >= self.MAX_LINE else self.MORE
            start, line = self.pos, bytes(data[self.pos:newline])
            self.pos = newline + 2
            if self.last:  # a trailer line, or the blank line ending them
                if not line:
                    return self.DONE
                continue
            size, *extension = line.split(b";", 1)
            if extension:
                size = size.rstrip(b" \t")
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                return self.BAD
            if int(size, 16) == 0:
                self.last = True
                continue
            end = self.pos + int(size, 16) + 2
            if len(data) < end:
                self.pos = start  # this chunk's line is read again when more arrived
                return self.MORE
            if data[end - 2:end] != b"\r\n":
                return self.BAD
            self.pos = end


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
    """gthread, with request heads and bodies read by the main loop (module docstring)."""

    def init_process(self) -> None:
        self.heads: dict[TConn, float] = {}  # connection -> when it is given up
        self.buffered = 0  # bytes held by the connections in self.heads
        cfg = self.cfg
        # The largest head gunicorn's parser accepts: past it, the parser answers 414/431.
        self.max_head = (cfg.limit_request_line + 2
                         + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 2)
        self.head_first = not cfg.is_ssl and cfg.http2_cleartext not in (
            "prior-knowledge", "both")
        super().init_process()

    # -- connections waiting for their request ------------------------------------------------

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
        self._start_request(conn, bytearray())
        self._await(conn, time.monotonic() + self.cfg.keepalive)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has bytes: read its next request here, not in a thread."""
        if not self.head_first:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_request(conn, bytearray())
        self.heads[conn] = time.monotonic() + GRACE_S
        self._on_readable(conn, client, registered=False)

    def enqueue_req(self, conn: TConn) -> None:
        """Pipelined bytes left by the previous request are only given to a thread once
        they hold a whole request; otherwise the rest is awaited here."""
        parser = conn.parser
        if self.head_first and conn.initialized and parser is not None:
            pending = parser.unreader.buf.getvalue()
            if pending:
                self._start_request(conn, bytearray(parser.unreader.take_buffered()))
                conn.started = time.monotonic()
                self.buffered += len(conn.head)
                self.heads[conn] = pace(conn.started, len(conn.head))
                if self._complete(conn):
                    self._serve(conn, registered=False)
                    return
                conn.sock.setblocking(False)
                self._await(conn, self.heads[conn])
                return
        super().enqueue_req(conn)

    @staticmethod
    def _start_request(conn: TConn, data: bytearray) -> None:
        conn.head = data  # the request's bytes so far: head, then body
        conn.body_at = 0  # where its body starts, once its head is complete
        conn.started = None  # its first byte's time
        conn.framing = None  # its Framing, once its head is complete
        conn.chunks = None  # its ChunkScan, if chunked
        conn.continued = False  # whether "100 Continue" was sent for it here

    def _await(self, conn: TConn, give_up_at: float) -> None:
        self.heads[conn] = give_up_at
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, client: Any, registered: bool = True) -> None:
        """Read what the connection has; hand it to a thread once its request is complete.
        `registered`: whether the poller watches it (a kept-alive connection that just
        became readable is read first, and only watched if its request is still partial)."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"" and conn.framing is not None:
            # The client stopped sending inside its body (a half-close): the app answers
            # the body it got (a 400) to whoever still reads, as before bodies were read here.
            self._hand_over(conn, registered)
            return
        if data == b"":
            self._drop(conn)  # the client left (unregistering what is not: suppressed)
            return
        if data:
            if conn.started is None:
                conn.started = time.monotonic()
            conn.head += data
            self.buffered += len(data)
            self.heads[conn] = pace(conn.started, len(conn.head))
        if data and self._complete(conn):
            self._serve(conn, registered)
        elif not registered:
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_readable, conn))

    def _complete(self, conn: TConn) -> bool:
        """Whether a thread can serve the request without waiting: its head and body are
        here, or it is one gunicorn refuses at once, or it is too large to hold here."""
        data = conn.head
        if conn.framing is None:
            end = head_end(data)
            if end is None:
                return len(data) > self.max_head
            conn.framing = framing(data[:end])
            conn.body_at = end
            if conn.framing.chunked:
                conn.chunks = ChunkScan(end)
            if conn.framing.expects_continue:
                try:
                    conn.sock.send(CONTINUE)
                except OSError:
                    return True  # the thread meets the same error
                conn.continued = True
        body = len(data) - conn.body_at
        if body >= LOOP_BODY_MAX or self.buffered > LOOP_BUDGET:
            return True
        if conn.chunks is not None:
            return conn.chunks.feed(data) != ChunkScan.MORE
        return body >= (conn.framing.length or 0)

    def _serve(self, conn: TConn, registered: bool) -> None:
        """A complete request: to a thread, or answered 400 here if its chunked framing is
        broken (the app would meet the error mid-body; nothing after it can be trusted)."""
        if conn.chunks is not None and conn.chunks.state == ChunkScan.BAD:
            with contextlib.suppress(OSError):
                conn.sock.send(json_error(400, "Bad Request",
                                          "bad request: malformed chunked body"))
            self._drop(conn)
            return
        self._hand_over(conn, registered)

    def _hand_over(self, conn: TConn, registered: bool) -> None:
        if registered:
            self.poller.unregister(conn.sock)
        del self.heads[conn]
        self.buffered -= len(conn.head)
        conn.init()  # the parser (no TLS, no HTTP/2 sniffing: nothing blocks here)
        unreader = conn.parser.unreader
        if not isinstance(unreader.sock, PacedSocket):
            unreader.sock = PacedSocket(unreader.sock)
        unreader.sock.restart(conn.started or time.monotonic(), len(conn.head))
        unreader.unread(bytes(conn.head))
        conn.head = None
        conn.data_ready = True
        super().enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        del self.heads[conn]
        self.buffered -= len(conn.head)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's expiry of kept-alive connections, plus requests that fell behind their
        pace (all of them when the worker stops)."""
        super().murder_keepalived(force)
        now = time.monotonic()
        for conn, give_up_at in list(self.heads.items()):
            if force or not self.alive or give_up_at <= now:
                self._drop(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        """gunicorn's, without a second "100 Continue" when the main loop sent one, and
        with the answer written through the request's PacedSocket (its send pace)."""
        if getattr(conn, "continued", False):
            req._expected_100_continue = False
            conn.continued = False
        paced = conn.parser.unreader.sock if conn.parser is not None else None
        if not isinstance(paced, PacedSocket):
            return super().handle_request(req, conn)
        raw, conn.sock = conn.sock, paced
        try:
            return super().handle_request(req, conn)
        finally:
            conn.sock = raw

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


__all__ = ["ChunkScan", "Framing", "HeadFirstWorker", "PacedSocket", "framing", "head_end",
           "json_error"]
