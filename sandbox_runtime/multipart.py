"""The upload body's reader: one multipart/form-data part, the `file` field, streamed to a sink.

Called by routes.py's POST /upload, with files.Upload as the sink (which confines the
filename and writes the bytes). Exactly one part is accepted, the `file` field with a
filename; framing is RFC 2046 with CRLF line breaks, as every HTTP client sends it: a
preamble, transport padding after a boundary, an epilogue, folded part headers, RFC 2231
filenames (`filename*=UTF-8''...`). Header parameters are parsed by werkzeug's
parse_options_header, imported on the first upload (it costs a tenth of a second or more at
a `--stdio` start-up under gVisor's ptrace platform).

Why not a maintained multipart parser for the framing (measured, docs/runtime.md): werkzeug's
sans-IO MultipartDecoder copies each chunk three times (1.6-4 ms per MiB here against 0.3 ms
for this reader: uploads of 1 MiB would miss their 5 ms goal); python-multipart is as fast
but refuses folded part headers and RFC 2231 filenames; `multipart` refuses transport
padding. This reader searches each chunk in place for the delimiter, holds back only the
last `len(delimiter) - 1` bytes, and hands the sink memoryview slices: the file's bytes are
never copied. It must never hold more than one chunk (plus a delimiter) of the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sandbox_runtime.errors import BadRequest, RequestEntityTooLarge

CHUNK = 1024 * 1024
FIELD = "file"
# Multipart framing (boundaries, part headers) on top of the file's own bytes.
OVERHEAD = 64 * 1024
MAX_PART_HEADERS = 16 * 1024
MAX_BOUNDARY = 200  # RFC 2046 says 70; some clients send longer ones

Read = Callable[[int], bytes]


class Sink(Protocol):
    def open(self, filename: str) -> None: ...

    def write(self, data: bytes | memoryview) -> None: ...


def read_file(content_type: str, content_length: int | None, max_bytes: int, read: Read,
              sink: Sink) -> None:
    """Parse the body from `read`, calling `sink.open(filename)` once, then `sink.write`
    with the file's bytes. BadRequest for anything but one well-framed `file` part, 413
    when the declared length cannot fit `max_bytes` (the sink counts what it gets)."""
    from werkzeug.http import parse_options_header

    mimetype, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if (mimetype != "multipart/form-data" or not boundary or len(boundary) > MAX_BOUNDARY
            or not boundary.isascii() or boundary.endswith(" ")):
        raise BadRequest(f"body: expected multipart/form-data with a boundary and a "
                         f"'{FIELD}' field")
    if content_length is not None and content_length > max_bytes + OVERHEAD:
        raise RequestEntityTooLarge(f"file: larger than the {max_bytes} byte limit")
    try:
        _parse(boundary.encode(), read, sink)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: malformed multipart ({exc})") from None


def _parse(boundary: bytes, read: Read, sink: Sink) -> None:
    body = _Cursor(read)
    # Preamble (ignored), then the first boundary line: "--boundary" [LWSP] CRLF.
    dash = b"--" + boundary
    at = body.find_line_start(dash, OVERHEAD)
    body.pos = at + len(dash)
    _after_boundary(body, first=True)
    # The part's headers, up to the blank line (none at all: CRLF at once).
    if body.startswith(b"\r\n"):
        end = body.pos
    else:
        end = body.find(b"\r\n\r\n", MAX_PART_HEADERS, "part headers do not end") + 2
    head = body.buf[body.pos:end]
    body.pos = end + 2
    sink.open(_file_name(head))
    # The file's bytes, up to "CRLF--boundary", then the close delimiter.
    _stream(body, b"\r\n" + dash, sink.write)
    _after_boundary(body, first=False)


def _after_boundary(body: _Cursor, *, first: bool) -> None:
    """After a delimiter: "--" closes the body (epilogue ignored); LWSP CRLF opens a part."""
    while not _boundary_end_known(body.buf[body.pos:body.pos + 80]):
        if len(body.buf) - body.pos > 80 or not body.fill():
            raise ValueError("body ended early")
    if body.startswith(b"--"):
        if first:
            raise BadRequest(f"body: no '{FIELD}' file field in the form")
        return  # the close delimiter: done, whatever epilogue follows
    while body.buf[body.pos:body.pos + 1] in (b" ", b"\t"):
        body.pos += 1
    if not body.startswith(b"\r\n"):
        raise ValueError("junk after a boundary")
    if not first:
        raise BadRequest(f"body: unexpected second multipart part; send exactly one "
                         f"'{FIELD}' file field")
    body.pos += 2


def _file_name(head: bytes) -> str:
    """The filename of the `file` part, from its Content-Disposition header."""
    from werkzeug.http import parse_options_header

    lines: list[str] = []
    for raw in head.decode("utf-8").split("\r\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += " " + raw.strip(" \t")  # obsolete line folding
        elif raw:
            lines.append(raw)
    disposition = None
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("part header without a colon")
        if name.strip(" \t").lower() == "content-disposition":
            disposition = value.strip(" \t")
    if disposition is None:
        raise ValueError("missing Content-Disposition header")
    _, extra = parse_options_header(disposition)
    field_name, filename = extra.get("name"), extra.get("filename")
    if filename is None:
        raise BadRequest(f"body: unexpected multipart field {field_name!r}; "
                         f"send exactly one '{FIELD}' file field")
    if field_name != FIELD:
        raise BadRequest(f"body: unexpected multipart file field {field_name!r}; "
                         f"send exactly one '{FIELD}'")
    return str(filename)


def _stream(body: _Cursor, delimiter: bytes, write: Callable[[bytes | memoryview], None]) -> None:
    """Write everything before `delimiter`; leave `body` just after it.

    Each chunk is searched where it lies and written from memoryview slices; only the
    last len(delimiter) - 1 bytes are held back (they may start a delimiter that the
    next chunk completes). Nothing is copied but those few bytes.
    """
    size = len(delimiter)
    chunk, start = body.buf, body.pos
    pending = b""
    while True:
        if pending:
            if len(chunk) - start < size:
                chunk, start, pending = pending + chunk[start:], 0, b""
            else:
                probe = pending + chunk[start:start + size - 1]
                at = probe.find(delimiter)
                if 0 <= at < len(pending):
                    write(probe[:at])
                    body.buf, body.pos = chunk, start + at + size - len(pending)
                    return
                write(pending)
                pending = b""
        at = chunk.find(delimiter, start)
        if at >= 0:
            write(memoryview(chunk)[start:at])
            body.buf, body.pos = chunk, at + size
            return
        keep = max(start, len(chunk) - (size - 1))
        write(memoryview(chunk)[start:keep])
        pending = chunk[keep:]
        chunk, start = body.read(CHUNK), 0
        if not chunk:
            raise ValueError("body ended early")


def _boundary_end_known(data: bytes) -> bool:
    """Enough bytes after a boundary to tell "--" (close) from LWSP CRLF (next part)."""
    if data.startswith(b"--"):
        return True
    rest = data.lstrip(b" \t")
    return rest not in (b"", b"\r") and data != b"-"


class _Cursor:
    """The request body read so far (`buf`) and a position in it; more is read on demand.

    Searching with offsets, rather than slicing, keeps the (up to 1 MiB) chunks uncopied.
    """

    def __init__(self, read: Read) -> None:
        self.read = read
        self.buf = read(CHUNK)
        self.pos = 0

    def fill(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end of the body."""
        more = self.read(CHUNK)
        if not more:
            return False
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def startswith(self, prefix: bytes) -> bool:
        while len(self.buf) - self.pos < len(prefix):
            if not self.fill():
                return False
        return self.buf.startswith(prefix, self.pos)

    def find(self, needle: bytes, limit: int, what: str) -> int:
        """Absolute index of `needle` at or after pos, reading at most `limit` bytes more."""
        while True:
            at = self.buf.find(needle, self.pos)
            if at >= 0:
                return at
            if len(self.buf) - self.pos > limit or not self.fill():
                raise ValueError(what if self.buf else "empty body")

    def find_line_start(self, needle: bytes, limit: int) -> int:
        """Index of `needle` at the very start of the body or right after a CRLF."""
        if self.startswith(needle):
            return self.pos
        return self.find(b"\r\n" + needle, limit, "no boundary") + 2
