"""Workspace file operations: download, list, exists, and the upload's destination file.

Called by routes.py's file routes. Every path goes through confine.py first (resolve, and
check_opened on what was opened); the upload's bytes come from multipart.py, which parses
the body and hands them to `Upload.write`. Large files stream through fixed-size buffers:
nothing here may read a whole upload or download into memory, and an upload that fails
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import stat
import threading
from typing import IO, Any, cast

from sandbox_runtime.confine import check_opened, exists_inside, relative, resolve
from sandbox_runtime.errors import BadRequest, Forbidden, NotFound, RequestEntityTooLarge

# Replaced files whose blocks are still to be freed (each holds its disk space until then).
CLOSER_BACKLOG = 64
# How many times exists() looks again at a path that changes while it is walked.
EXISTS_ATTEMPTS = 4


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
    check_opened(base, fd, user_path)
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
    check_opened(base, fd, user_path)
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
    swapped for a symlink while we look: see confine.exists_inside. A path that keeps changing is
    a 403, as download answers when a swap leads outside."""
    for _ in range(EXISTS_ATTEMPTS):
        found = exists_inside(base, resolve(base, user_path))
        if found is not None:
            return found
    raise Forbidden(f"path: {user_path!r} kept changing while it was checked")


class Upload:
    """Where one uploaded file goes: it appears only when whole (multipart.Sink).

    The bytes are written to a hidden temporary file in the destination directory and
    renamed over the destination by `commit()`, so a failed or oversized upload leaves
    nothing behind (`abort()`). A symlink at the destination is resolved first (403 if it
    leads outside); the final rename is relative to the opened directory, so a symlink
    swapped in meanwhile is replaced, not followed.
    """

    def __init__(self, base: str, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.size = 0
        self.real = ""
        self._dir_fd: int | None = None
        self._tmp_name = ""
        self._fd: int | None = None
        # The file this upload replaced, still open: see release().
        self.replaced_fd: int | None = None

    def open(self, filename: str) -> None:
        if not filename or filename.endswith("/"):
            raise BadRequest("file: the filename must name a file under the workspace")
        self.real = resolve(self.base, filename, what="file")
        if self.real == self.base:
            raise BadRequest("file: the filename must name a file, not the workspace")
        parent, name = os.path.split(self.real)
        try:
            os.makedirs(parent, exist_ok=True)
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileExistsError, NotADirectoryError):
            raise BadRequest(f"file: a parent of {filename!r} is not a directory") from None
        except OSError as exc:
            raise Forbidden(f"file: cannot create {filename!r} ({exc.strerror})") from None
        check_opened(self.base, dir_fd, filename)
        self._dir_fd = dir_fd
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise BadRequest(f"file: {filename!r} is a directory")
        self._tmp_name = f".{name[:200]}.upload-{os.urandom(6).hex()}"
        self._fd = os.open(self._tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)

    def write(self, data: bytes | memoryview) -> None:
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

    def commit(self) -> dict[str, Any]:
        """Put the file in place; the answer `{"path", "size"}`."""
        assert self._fd is not None and self._dir_fd is not None  # open() came first
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
        return {"path": relative(self.base, self.real), "size": self.size}

    def release(self) -> None:
        """Let go of the replaced file (frees its blocks); call once the answer is out."""
        if self.replaced_fd is not None:
            fd, self.replaced_fd = self.replaced_fd, None
            close_later(fd)

    def abort(self) -> None:
        """The upload failed: remove what was written."""
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
