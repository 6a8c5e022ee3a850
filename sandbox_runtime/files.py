"""Workspace files: path confinement, streaming upload, download, list and exists.

Called by app.py's file routes. Every path a request names goes through `resolve()`, which
resolves symlinks and `..` and refuses anything outside the workspace (403) before the
filesystem is touched further; opened files are checked again through /proc/self/fd, so a
symlink swapped in between cannot redirect us. Large files stream through fixed-size buffers;
nothing here may read a whole upload or download into memory.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import IO, Any, cast

from sandbox_runtime.errors import BadRequest, Forbidden, NotFound, RequestEntityTooLarge

CHUNK = 1024 * 1024
MAX_PATH = 4096
UPLOAD_FIELD = "file"
# Multipart framing (boundaries, part headers) on top of the file's own bytes.
MULTIPART_OVERHEAD = 64 * 1024
MAX_PART_HEADERS = 16 * 1024
# Replaced files whose blocks are still to be freed (each holds its disk space until then).
CLOSER_BACKLOG = 64
MAX_BOUNDARY = 200  # RFC 2046 says 70; some clients send longer ones
NAME_MAX = 255  # bytes per path component on every Linux filesystem we serve from
# A path that changes while it is resolved (a component renamed or swapped for a symlink by
# code in the sandbox) is looked at again this many times before the request gives up.
RESOLVE_ATTEMPTS = 4


def is_inside(base: str, real: str) -> bool:
    return real == base or real.startswith(base.rstrip("/") + "/")


def resolve(base: str, user_path: str, *, what: str = "path") -> str:
    """The real absolute path of `user_path` (relative to the workspace, or absolute inside it).

    Raises Forbidden when it (after symlinks and `..`) leaves the workspace, BadRequest when
    it is malformed (NUL, too long, a component longer than NAME_MAX, a symlink chain too
    deep to follow), NotFound when it kept changing while it was resolved (a component
    renamed between realpath's lstat and readlink). Missing paths resolve too; callers
    decide whether that is a 404.
    """
    if "\0" in user_path or len(user_path) > MAX_PATH:
        raise BadRequest(f"{what}: invalid path")
    candidate = user_path if os.path.isabs(user_path) else os.path.join(base, user_path)
    # The kernel would say ENAMETOOLONG somewhere later (an unexpected error there); say it now.
    if any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX
           for part in candidate.split("/")):
        raise BadRequest(f"{what}: a path component is longer than {NAME_MAX} bytes")
    for _ in range(RESOLVE_ATTEMPTS):
        try:
            real = os.path.realpath(candidate)
            break
        except RecursionError:
            # realpath recurses once per symlink of a chain; the kernel stops at 40.
            raise BadRequest(f"{what}: too many levels of symbolic links") from None
        except OSError:
            # A symlink realpath had just seen was removed or replaced before it could read
            # it: the path is changing under us. Look again.
            continue
    else:
        raise NotFound(f"{what}: {user_path!r} changed while it was looked up")
    if not is_inside(base, real):
        raise Forbidden(f"{what}: {user_path!r} is outside the workspace")
    return real


def _check_fd(base: str, fd: int, user_path: str) -> None:
    """Containment again on what was actually opened (a symlink may have been swapped in)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc: the resolve() check above stands alone
    if not is_inside(base, real):
        os.close(fd)
        raise Forbidden(f"path: {user_path!r} is outside the workspace")


def relative(base: str, real: str) -> str:
    return os.path.relpath(real, base) if real != base else "."


class Bounded(io.RawIOBase):
    """A file read no further than offset `size`, the size it had when its download began:
    the answer never carries more than its Content-Length, however the file grows
    meanwhile. fileno(), seek() and tell() are the file's own (gunicorn's sendfile uses
    them, and bounds its count by the declared length itself)."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__()
        self.raw = raw
        self.end = size
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.end - self.raw.tell())
        if want <= 0:
            return 0
        return self.raw.readinto(memoryview(buffer)[:want]) or 0

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_for_download(base: str, user_path: str) -> tuple[IO[bytes], int]:
    """An open regular file inside the workspace and its size (stat once: the file reads
    no further, see Bounded); 404, 403 or 400 otherwise."""
    real = resolve(base, user_path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"path: {user_path!r} does not exist") from None
    except IsADirectoryError:
        raise BadRequest(f"path: {user_path!r} is a directory") from None
    except OSError as exc:
        raise Forbidden(f"path: {user_path!r} cannot be opened ({exc.strerror})") from None
    _check_fd(base, fd, user_path)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise BadRequest(f"path: {user_path!r} is {kind}")
    os.set_blocking(fd, True)
    return cast(IO[bytes], Bounded(io.FileIO(fd, "rb"), info.st_size)), info.st_size


def entry_type(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "directory"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def list_dir(base: str, user_path: str, *, max_entries: int) -> list[dict[str, Any]]:
    """Entries of a workspace directory, sorted by name, symlinks reported, never followed."""
    real = resolve(base, user_path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"path: {user_path!r} does not exist") from None
    except NotADirectoryError:
        raise BadRequest(f"path: {user_path!r} is not a directory") from None
    except OSError as exc:
        raise Forbidden(f"path: {user_path!r} cannot be listed ({exc.strerror})") from None
    _check_fd(base, fd, user_path)
    entries: list[dict[str, Any]] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if len(entries) >= max_entries:
                    raise RequestEntityTooLarge(
                        f"path: {user_path!r} has more than {max_entries} entries")
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue  # vanished while we listed it
                entries.append({"name": entry.name, "type": entry_type(entry), "size": size})
    finally:
        os.close(fd)
    entries.sort(key=lambda e: e["name"])
    return entries


def exists(base: str, user_path: str) -> bool:
    """Whether `user_path` names something inside the workspace (symlinks followed, like
    os.path.exists). Never answers for a file outside, even if a directory on the way is
    swapped for a symlink while we look: see _exists_inside. A path that keeps changing is
    a 403, as download answers when a swap leads outside."""
    for _ in range(RESOLVE_ATTEMPTS):
        found = _exists_inside(base, resolve(base, user_path))
        if found is not None:
            return found
    raise Forbidden(f"path: {user_path!r} kept changing while it was checked")


def _exists_inside(base: str, real: str) -> bool | None:
    """Walk `real` (symlink-free when resolve() saw it) from the workspace one component at
    a time with O_PATH|O_NOFOLLOW: no symlink is followed, so the walk cannot leave the
    workspace. None: a symlink appeared on the way (a race) or the directory reached was
    moved outside; the caller resolves again."""
    parts = [p for p in relative(base, real).split("/") if p not in ("", ".")]
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                step = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except NotADirectoryError:
                # A file where a directory should be (the path does not exist), or a
                # symlink swapped in after resolve() (a race).
                try:
                    mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                except OSError:
                    return False
                return None if stat.S_ISLNK(mode) else False
            except OSError:
                return False  # missing, or not searchable: os.path.exists says False too
            os.close(fd)
            fd = step
        with contextlib.suppress(OSError):  # no /proc: the walk alone confines
            if not is_inside(base, os.readlink(f"/proc/self/fd/{fd}")):
                return None
        if not parts:
            return True
        try:
            mode = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            return False
        # resolve() resolves a final symlink unless it loops (os.path.exists: False); one
        # swapped in meanwhile is not followed either.
        return not stat.S_ISLNK(mode)
    finally:
        os.close(fd)


class Upload:
    """Streams one multipart request body into the workspace; the file appears only when whole.

    The part is written to a hidden temporary file in the destination directory and renamed
    over the destination at the end, so a failed or oversized upload leaves nothing behind.
    A symlink at the destination is resolved first (403 if it leads outside); the final
    rename is relative to the opened directory, so a symlink swapped in meanwhile is replaced,
    not followed.

    The body is parsed here, not by werkzeug's form parser: exactly one part, the `file`
    field, is allowed, so the parser only has to find one delimiter, and the file's bytes go
    from the request's read buffer straight to the file (memoryview slices, no re-buffering).
    Framing is RFC 2046 with CRLF line breaks, as every HTTP client sends it.
    """

    def __init__(self, base: str, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.size = 0
        self.real = ""
        self._dir_fd: int | None = None
        self._tmp_name = ""
        self._fd: int | None = None
        self._done = False
        # The file this upload replaced, still open: see release().
        self.replaced_fd: int | None = None

    def receive(self, content_type: str | None, content_length: int | None,
                read: Callable[[int], bytes]) -> dict[str, Any]:
        from werkzeug.http import parse_options_header  # uploads are served by Flask anyway

        mimetype, options = parse_options_header(content_type or "")
        boundary = options.get("boundary", "")
        if (mimetype != "multipart/form-data" or not boundary or len(boundary) > MAX_BOUNDARY
                or not boundary.isascii() or boundary.endswith(" ")):
            raise BadRequest("body: expected multipart/form-data with a boundary "
                             f"and a '{UPLOAD_FIELD}' field")
        if content_length is not None and content_length > self.max_bytes + MULTIPART_OVERHEAD:
            raise RequestEntityTooLarge(f"file: larger than the {self.max_bytes} byte limit")
        try:
            self._parse(boundary.encode(), read)
        except (ValueError, UnicodeDecodeError) as exc:
            self._abort()
            raise BadRequest(f"body: malformed multipart ({exc})") from None
        except BaseException:
            self._abort()
            raise
        return {"path": relative(self.base, self.real), "size": self.size}

    def _parse(self, boundary: bytes, read: Callable[[int], bytes]) -> None:
        body = _Cursor(read)
        # Preamble (ignored), then the first boundary line: "--boundary" [LWSP] CRLF.
        dash = b"--" + boundary
        at = body.find_line_start(dash, MULTIPART_OVERHEAD)
        body.pos = at + len(dash)
        self._after_boundary(body, first=True)
        # The part's headers, up to the blank line (none at all: CRLF at once).
        if body.startswith(b"\r\n"):
            end = body.pos
        else:
            end = body.find(b"\r\n\r\n", MAX_PART_HEADERS, "part headers do not end") + 2
        head = body.buf[body.pos:end]
        body.pos = end + 2
        self._open(self._file_name(head))
        # The file's bytes, up to "CRLF--boundary", then the close delimiter.
        self._stream(body, b"\r\n" + dash)
        self._after_boundary(body, first=False)
        self._commit()

    def _after_boundary(self, body: _Cursor, *, first: bool) -> None:
        """After a delimiter: "--" closes the body (epilogue ignored); LWSP CRLF opens a part."""
        while not _boundary_end_known(body.buf[body.pos:body.pos + 80]):
            if len(body.buf) - body.pos > 80 or not body.fill():
                raise ValueError("body ended early")
        if body.startswith(b"--"):
            if first:
                raise BadRequest(f"body: no '{UPLOAD_FIELD}' file field in the form")
            return  # the close delimiter: done, whatever epilogue follows
        while body.buf[body.pos:body.pos + 1] in (b" ", b"\t"):
            body.pos += 1
        if not body.startswith(b"\r\n"):
            raise ValueError("junk after a boundary")
        if not first:
            raise BadRequest(f"body: unexpected second multipart part; send exactly one "
                             f"'{UPLOAD_FIELD}' file field")
        body.pos += 2

    @staticmethod
    def _file_name(head: bytes) -> str:
        """The filename of the `file` part, from its Content-Disposition header."""
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
        from werkzeug.http import parse_options_header

        _, extra = parse_options_header(disposition)
        field_name, filename = extra.get("name"), extra.get("filename")
        if filename is None:
            raise BadRequest(f"body: unexpected multipart field {field_name!r}; "
                             f"send exactly one '{UPLOAD_FIELD}' file field")
        if field_name != UPLOAD_FIELD:
            raise BadRequest(f"body: unexpected multipart file field {field_name!r}; "
                             f"send exactly one '{UPLOAD_FIELD}'")
        return str(filename)

    def _stream(self, body: _Cursor, delimiter: bytes) -> None:
        """Write everything before `delimiter` to the file; leave `body` just after it.

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
                        self._write(probe[:at])
                        body.buf, body.pos = chunk, start + at + size - len(pending)
                        return
                    self._write(pending)
                    pending = b""
            at = chunk.find(delimiter, start)
            if at >= 0:
                self._write(memoryview(chunk)[start:at])
                body.buf, body.pos = chunk, at + size
                return
            keep = max(start, len(chunk) - (size - 1))
            self._write(memoryview(chunk)[start:keep])
            pending = chunk[keep:]
            chunk, start = body.read(CHUNK), 0
            if not chunk:
                raise ValueError("body ended early")

    def _open(self, filename: str) -> None:
        if not filename or filename.endswith("/"):
            raise BadRequest("file: the filename must name a file under the workspace")
        self.real = resolve(self.base, filename, what="file")
        if self.real == self.base:
            raise BadRequest("file: the filename must name a file, not the workspace")
        parent, name = os.path.split(self.real)
        try:
            os.makedirs(parent, exist_ok=True)
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileExistsError:
            raise BadRequest(f"file: a parent of {filename!r} is not a directory") from None
        except NotADirectoryError:
            raise BadRequest(f"file: a parent of {filename!r} is not a directory") from None
        except OSError as exc:
            raise Forbidden(f"file: cannot create {filename!r} ({exc.strerror})") from None
        _check_fd(self.base, dir_fd, filename)
        self._dir_fd = dir_fd
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise BadRequest(f"file: {filename!r} is a directory")
        self._tmp_name = f".{name[:200]}.upload-{os.urandom(6).hex()}"
        self._fd = os.open(self._tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)

    def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise RequestEntityTooLarge(f"file: larger than the {self.max_bytes} byte limit")
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            # Disk full or a filesystem limit: the client can do nothing but send less.
            raise RequestEntityTooLarge(f"file: cannot store the upload ({exc.strerror})") from None

    def _commit(self) -> None:
        assert self._fd is not None and self._dir_fd is not None
        os.close(self._fd)
        self._fd = None
        name = os.path.basename(self.real)
        # Keep the file being replaced open across the rename: the last close frees its
        # blocks, which costs about a millisecond per MiB on ext4; release() does it after
        # the answer is sent. Only a regular file is held (no FIFO, no symlink).
        with contextlib.suppress(OSError):
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=self._dir_fd)
            if stat.S_ISREG(os.fstat(old).st_mode):
                self.replaced_fd = old
            else:
                os.close(old)
        os.rename(self._tmp_name, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.close(self._dir_fd)
        self._dir_fd = None
        self._done = True

    def release(self) -> None:
        """Let go of the replaced file (frees its blocks); call once the answer is out."""
        if self.replaced_fd is not None:
            fd, self.replaced_fd = self.replaced_fd, None
            close_later(fd)

    def _abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_name, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = None
        self.release()


class _Closer(threading.Thread):
    """Closes descriptors of replaced files off the request path (the close frees blocks)."""

    def __init__(self) -> None:
        super().__init__(name="sandbox-runtime-closer", daemon=True)
        self.queue: queue.Queue[int] = queue.Queue(maxsize=CLOSER_BACKLOG)
        self.pid = os.getpid()

    def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                os.close(self.queue.get())


_closer: _Closer | None = None
_closer_lock = threading.Lock()


def close_later(fd: int) -> None:
    """Hand `fd` to this process's closer thread; close it here if that is not possible
    (backlog full, or no thread can be started, e.g. at the process limit)."""
    global _closer
    try:
        with _closer_lock:
            if _closer is None or _closer.pid != os.getpid() or not _closer.is_alive():
                closer = _Closer()
                closer.start()
                _closer = closer
            _closer.queue.put_nowait(fd)
    except (RuntimeError, queue.Full):
        os.close(fd)


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

    def __init__(self, read: Callable[[int], bytes]) -> None:
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
