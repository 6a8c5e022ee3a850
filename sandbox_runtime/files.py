"""Workspace files: path confinement, streaming upload, download, list and exists.

Called by app.py's file routes. Every path a request names goes through `resolve()`, which
resolves symlinks and `..` and refuses anything outside the workspace (403) before the
filesystem is touched further; opened files are checked again through /proc/self/fd, so a
symlink swapped in between cannot redirect us. Large files stream through fixed-size buffers;
nothing here may read a whole upload or download into memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from typing import IO, Any

from werkzeug.exceptions import BadRequest, Forbidden, NotFound, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, Preamble

CHUNK = 1024 * 1024
MAX_PATH = 4096
UPLOAD_FIELD = "file"
# Multipart framing (boundaries, part headers) on top of the file's own bytes.
MULTIPART_OVERHEAD = 64 * 1024


def is_inside(base: str, real: str) -> bool:
    return real == base or real.startswith(base.rstrip("/") + "/")


def resolve(base: str, user_path: str, *, what: str = "path") -> str:
    """The real absolute path of `user_path` (relative to the workspace, or absolute inside it).

    Raises Forbidden when it (after symlinks and `..`) leaves the workspace, BadRequest when
    it is malformed. Missing paths resolve too; callers decide whether that is a 404.
    """
    if "\0" in user_path or len(user_path) > MAX_PATH:
        raise BadRequest(f"{what}: invalid path")
    candidate = user_path if os.path.isabs(user_path) else os.path.join(base, user_path)
    real = os.path.realpath(candidate)
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


def open_for_download(base: str, user_path: str) -> tuple[IO[bytes], int]:
    """An open regular file inside the workspace and its size; 404, 403 or 400 otherwise."""
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
    return os.fdopen(fd, "rb", buffering=0), info.st_size


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
    return os.path.exists(resolve(base, user_path))


class Upload:
    """Streams one multipart request body into the workspace; the file appears only when whole.

    The part is written to a hidden temporary file in the destination directory and renamed
    over the destination at the end, so a failed or oversized upload leaves nothing behind.
    A symlink at the destination is resolved first (403 if it leads outside); the final
    rename is relative to the opened directory, so a symlink swapped in meanwhile is replaced,
    not followed.
    """

    def __init__(self, base: str, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.size = 0
        self.real = ""
        self._dir_fd: int | None = None
        self._tmp_name = ""
        self._file: IO[bytes] | None = None
        self._done = False

    def receive(self, content_type: str | None, content_length: int | None,
                read: Callable[[int], bytes]) -> dict[str, Any]:
        mimetype, options = parse_options_header(content_type or "")
        boundary = options.get("boundary", "")
        if mimetype != "multipart/form-data" or not boundary:
            raise BadRequest("body: expected multipart/form-data with a boundary "
                             f"and a '{UPLOAD_FIELD}' field")
        if content_length is not None and content_length > self.max_bytes + MULTIPART_OVERHEAD:
            raise RequestEntityTooLarge(f"file: larger than the {self.max_bytes} byte limit")
        decoder = MultipartDecoder(boundary.encode(), max_form_memory_size=4 * CHUNK,
                                   max_parts=4)
        try:
            self._decode(decoder, read)
        except (ValueError, UnicodeDecodeError) as exc:
            self._abort()
            raise BadRequest(f"body: malformed multipart ({exc})") from None
        except BaseException:
            self._abort()
            raise
        if not self._done:
            self._abort()
            raise BadRequest(f"body: no '{UPLOAD_FIELD}' file field in the form")
        return {"path": relative(self.base, self.real), "size": self.size}

    def _decode(self, decoder: MultipartDecoder, read: Callable[[int], bytes]) -> None:
        in_file = False
        while True:
            event = decoder.next_event()
            if isinstance(event, Preamble):
                continue
            if isinstance(event, File):
                if event.name != UPLOAD_FIELD or self._done or in_file:
                    raise BadRequest(f"body: unexpected multipart file field {event.name!r}; "
                                     f"send exactly one '{UPLOAD_FIELD}'")
                self._open(event.filename)
                in_file = True
            elif isinstance(event, Field):
                raise BadRequest(f"body: unexpected multipart field {event.name!r}; "
                                 f"send exactly one '{UPLOAD_FIELD}' file field")
            elif isinstance(event, Data):
                if in_file:
                    self._write(event.data)
                    if not event.more_data:
                        self._commit()
                        in_file = False
            elif isinstance(event, Epilogue):
                return
            else:  # NeedData
                if decoder.complete:
                    raise ValueError("body ended early")
                chunk = read(CHUNK)
                decoder.receive_data(chunk or None)

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
        fd = os.open(self._tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise RequestEntityTooLarge(f"file: larger than the {self.max_bytes} byte limit")
        assert self._file is not None
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                view = view[written or 0:]
        except OSError as exc:
            # Disk full or a filesystem limit: the client can do nothing but send less.
            raise RequestEntityTooLarge(f"file: cannot store the upload ({exc.strerror})") from None

    def _commit(self) -> None:
        assert self._file is not None and self._dir_fd is not None
        self._file.close()
        self._file = None
        name = os.path.basename(self.real)
        os.rename(self._tmp_name, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.close(self._dir_fd)
        self._dir_fd = None
        self._done = True

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_name, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = None
