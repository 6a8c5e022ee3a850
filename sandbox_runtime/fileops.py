"""Workspace file operations on paths and trees: stat, mkdir, remove, move, copy, and a
directory's tar stream out and in.

Called by routes.py (GET /stat/*, POST /mkdir, /remove, /move, /copy, GET and POST
/archive/*). Every path goes through confine.py first; then every directory on the way is
opened from the workspace one component at a time with O_NOFOLLOW (`open_dir`), and the
last component is acted on relative to its opened parent. So a symlink is never followed
by an operation on a tree: `remove` unlinks a link (never its target), `copy` copies links
as links, `move` renames the link itself, and a symlink swapped in meanwhile makes the
request fail (403) instead of leading it outside. The tar streams are
sandbox_common.tarstream's (the client uses the same code). Nothing here holds a file's
bytes in memory beyond one chunk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import Any

from sandbox_common.tarstream import (
    DIR_FLAGS,
    MAX_TREE_DEPTH,
    ArchiveError,
    Extractor,
    open_subdir,
    tree_stream,
)
from sandbox_runtime.confine import NAME_MAX, check_opened, relative, resolve
from sandbox_runtime.errors import (
    BadRequest,
    Forbidden,
    HTTPError,
    NotFound,
    RequestEntityTooLarge,
)

COPY_CHUNK = 1024 * 1024
# `copy` walks at most MAX_TREE_DEPTH levels (a deeper tree is a 400 and no change; before,
# a RecursionError, a 500 and a half-made copy); `remove` (shutil.rmtree) answers 400 past
# Python's recursion limit (about 980 levels).
TYPES = ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"))


def os_error(exc: OSError, user_path: str) -> HTTPError:
    """An OSError of an operation on `user_path` as the answer the client gets."""
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"path: {user_path!r} does not exist")
    if exc.errno == errno.ELOOP:
        return Forbidden(f"path: {user_path!r} changed into a symlink while it was used")
    if isinstance(exc, PermissionError):
        return Forbidden(f"path: {user_path!r}: {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RequestEntityTooLarge(f"path: {user_path!r}: {exc.strerror}")
    return BadRequest(f"path: {user_path!r}: {exc.strerror}")


def kind(mode: int) -> str:
    return next((name for test, name in TYPES if test(mode)), "other")


def open_dir(base: str, real: str, user_path: str, *, create: bool = False) -> int:
    """The directory `real` (symlink-free, from resolve()) opened by walking from the
    workspace without following any symlink; made on the way with `create` (mkdir -p)."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in (p for p in relative(base, real).split("/") if p not in ("", ".")):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            step = open_subdir(fd, part)
            os.close(fd)
            fd = step
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, NotADirectoryError):
            raise BadRequest(f"path: {user_path!r}: a component is not a directory") from None
        raise os_error(exc, user_path) from None
    check_opened(base, fd, user_path)
    return fd


def split(base: str, user_path: str, what: str = "path") -> tuple[str, str]:
    """(real parent directory, last component) of a path that names an entry inside the
    workspace: its parent is resolved (symlinks and `..`), its last component is not
    (a symlink there is the entry itself). The workspace itself is refused."""
    trimmed = user_path.rstrip("/")
    parent, name = os.path.split(trimmed)
    if name in ("", ".", ".."):
        raise BadRequest(f"{what}: {user_path!r} must name an entry inside the workspace")
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise BadRequest(f"{what}: invalid path")
    return resolve(base, parent or ".", what=what), name


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent_of(base: str, user_path: str, what: str = "path") -> Iterator[tuple[int, str]]:
    """The opened parent directory of `user_path` and its last component (see split)."""
    real_parent, name = split(base, user_path, what)
    with _closing(open_dir(base, real_parent, user_path)) as fd:
        yield fd, name


def lstat_at(fd: int, name: str, user_path: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError as exc:
        raise os_error(exc, user_path) from None


def stat_path(base: str, user_path: str) -> dict[str, Any]:
    """Type, size, permission bits and mtime of a workspace path (symlinks followed, inside
    the workspace only, as download does)."""
    real = resolve(base, user_path)
    if real == base:
        fd, name = os.open(base, DIR_FLAGS), "."
    else:
        fd, name = open_dir(base, os.path.dirname(real), user_path), os.path.basename(real)
    try:
        st = lstat_at(fd, name, user_path)
    finally:
        os.close(fd)
    return {"path": relative(base, real), "type": kind(st.st_mode), "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime}


def mkdir(base: str, user_path: str, *, parents: bool) -> dict[str, Any]:
    """Make a directory; with `parents`, its missing parents too and no error if it exists."""
    real = resolve(base, user_path)
    if parents:
        os.close(open_dir(base, real, user_path, create=True))
    else:
        with parent_of(base, user_path) as (fd, name):
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                raise BadRequest(f"path: {user_path!r} already exists") from None
            except OSError as exc:
                raise os_error(exc, user_path) from None
    return {"path": relative(base, real)}


def remove(base: str, user_path: str, *, recursive: bool) -> dict[str, Any]:
    """Remove a file, a symlink (not its target) or, with `recursive`, a directory tree
    (without it a directory is refused, as rm(1) does). The tree's removal opens each
    directory relative to its parent and never follows a symlink inside it (shutil.rmtree's
    fd-based walk, which checks each directory it opens is the one it lstat'ed)."""
    with parent_of(base, user_path) as (fd, name):
        st = lstat_at(fd, name, user_path)
        try:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=fd)
            elif recursive:
                try:
                    shutil.rmtree(name, dir_fd=fd)
                except RecursionError:
                    raise BadRequest(f"path: {user_path!r} is nested too deeply to remove in "
                                     "one call; remove a part of it first") from None
            else:
                raise BadRequest(f"path: {user_path!r} is a directory (remove it recursively)")
        except OSError as exc:
            raise os_error(exc, user_path) from None
    return {"path": user_path, "type": kind(st.st_mode)}


def move(base: str, source: str, destination: str) -> dict[str, Any]:
    """Rename `source` (a symlink is moved as itself) to `destination`, replacing a file or
    link there, or an empty directory when moving a directory (rename(2) rules)."""
    with parent_of(base, source, "source") as (src_fd, src_name), \
            parent_of(base, destination, "destination") as (dst_fd, dst_name):
        st = lstat_at(src_fd, src_name, source)
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise BadRequest(f"destination: {destination!r} is a directory that is in "
                                 "the way") from None
            if exc.errno == errno.EINVAL:
                raise BadRequest(f"destination: {destination!r} is inside the source") \
                    from None
            raise os_error(exc, destination) from None
    return {"source": source, "destination": destination, "type": kind(st.st_mode)}


def copy(base: str, source: str, destination: str) -> dict[str, Any]:
    """Copy a file (replacing one at `destination`) or a directory tree (`destination` must
    not exist). A symlink named by `source` is followed (inside the workspace only); those
    inside a tree are copied as links, never followed; other special files are skipped."""
    real_src = resolve(base, source, what="source")
    if real_src == base:
        raise BadRequest("source: the workspace itself cannot be copied")
    src_dir_real, src_name = os.path.split(real_src)
    dst_parent, dst_name = split(base, destination, "destination")
    real_dst = os.path.join(dst_parent, dst_name)
    with _closing(open_dir(base, dst_parent, destination)) as dst_fd:
        src_fd = open_dir(base, src_dir_real, source)
        try:
            st = lstat_at(src_fd, src_name, source)
            if stat.S_ISDIR(st.st_mode):
                if real_dst == real_src or real_dst.startswith(real_src + "/"):
                    raise BadRequest(f"destination: {destination!r} is inside the source")
                if _lexists(dst_fd, dst_name):
                    raise BadRequest(f"destination: {destination!r} already exists")
                counts = {"files": 0, "directories": 0, "symlinks": 0, "bytes": 0}
                with _opened_dir(src_fd, src_name, source) as tree:
                    try:
                        _copy_tree(tree, dst_fd, dst_name, counts, destination, 0)
                    except BaseException:
                        # A failed tree copy leaves nothing: the destination was not there.
                        with contextlib.suppress(OSError):
                            shutil.rmtree(dst_name, dir_fd=dst_fd)
                        raise
            elif stat.S_ISREG(st.st_mode):
                size = _copy_file_at(src_fd, src_name, dst_fd, dst_name, source, destination)
                counts = {"files": 1, "directories": 0, "symlinks": 0, "bytes": size}
            else:
                raise BadRequest(f"source: {source!r} is not a file or directory")
        except OSError as exc:
            raise os_error(exc, destination) from None
        finally:
            os.close(src_fd)
    return {"source": source, "destination": destination, "type": kind(st.st_mode), **counts}


def _lexists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _opened_dir(parent: int, name: str, user_path: str) -> contextlib.AbstractContextManager[int]:
    try:
        return _closing(open_subdir(parent, name))
    except OSError as exc:
        raise os_error(exc, user_path) from None


def _copy_bytes(src: int, dst: int) -> int:
    """Copy an open file's bytes; sendfile when the kernel offers it, else reads of a chunk."""
    total = 0
    try:
        while sent := os.sendfile(dst, src, None, COPY_CHUNK):
            total += sent
        return total
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or total:
            raise
    while data := os.read(src, COPY_CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
        total += len(data)
    return total


def _copy_file_at(src_dir: int, src_name: str, dst_dir: int, dst_name: str, source: str,
                  destination: str) -> int:
    """One regular file, through a hidden temporary file renamed into place (a failed copy
    leaves nothing; a symlink at the destination is replaced, not followed)."""
    src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                  dir_fd=src_dir)
    tmp = f".{dst_name[:200]}.copy-{os.urandom(6).hex()}"
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise BadRequest(f"source: {source!r} is not a regular file")
        if _is_dir_at(dst_dir, dst_name):
            raise BadRequest(f"destination: {destination!r} is a directory")
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IMODE(st.st_mode) & 0o777, dir_fd=dst_dir)
        try:
            size = _copy_bytes(src, dst)
        finally:
            os.close(dst)
        os.rename(tmp, dst_name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        return size
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dst_dir)
        raise
    finally:
        os.close(src)


def _is_dir_at(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _copy_tree(src: int, dst_parent: int, dst_name: str, counts: dict[str, int],
               destination: str, depth: int) -> None:
    if depth > MAX_TREE_DEPTH:
        raise BadRequest(f"source: the tree is more than {MAX_TREE_DEPTH} levels deep")
    os.mkdir(dst_name, 0o700, dir_fd=dst_parent)
    counts["directories"] += 1
    with _opened_dir(dst_parent, dst_name, destination) as dst:
        for name in sorted(os.listdir(src)):
            try:
                st = os.stat(name, dir_fd=src, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                with _opened_dir(src, name, destination) as child:
                    _copy_tree(child, dst, name, counts, destination, depth + 1)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
                counts["symlinks"] += 1
            elif stat.S_ISREG(st.st_mode):
                src_file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                   | os.O_CLOEXEC, dir_fd=src)
                try:
                    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, stat.S_IMODE(st.st_mode) & 0o777,
                                  dir_fd=dst)
                    try:
                        counts["bytes"] += _copy_bytes(src_file, out)
                    finally:
                        os.close(out)
                finally:
                    os.close(src_file)
                counts["files"] += 1
        os.chmod(dst, stat.S_IMODE(os.fstat(src).st_mode) & 0o777)


# -- directories as tar streams ----------------------------------------------------------------


def archive_out(base: str, user_path: str) -> Iterator[bytes]:
    """A workspace directory as a tar stream (see sandbox_common.tarstream)."""
    real = resolve(base, user_path)
    fd = open_dir(base, real, user_path)
    return tree_stream(fd)


def archive_in(base: str, user_path: str, read: Callable[[int], bytes], *, max_bytes: int,
               max_entries: int) -> dict[str, Any]:
    """Extract a tar stream read from `read` into a workspace directory (made if missing),
    entry by entry as it arrives; refused streams leave the directory as it was."""
    real = resolve(base, user_path)
    fd = open_dir(base, real, user_path, create=True)
    try:
        with Extractor(fd, max_bytes=max_bytes, max_entries=max_entries) as extractor:
            while data := read(COPY_CHUNK):
                extractor.feed(data)
            summary = extractor.finish()
    except ArchiveError as exc:
        error = RequestEntityTooLarge if exc.too_large else BadRequest
        raise error(f"archive: {exc}") from None
    except OSError as exc:
        raise os_error(exc, user_path) from None
    finally:
        os.close(fd)
    return {"path": relative(base, real), **summary.as_dict()}
