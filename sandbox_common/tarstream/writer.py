"""A directory tree as an uncompressed tar stream, made file by file, never following a link.

Used by the runtime (GET /archive/*, sandbox_runtime.fileops) and the client (upload_dir,
agentic_sandbox._transfer), through sandbox_common.tarstream. It reads a file 1 MiB at a time
and holds no more; it must not enter a symlink nor send anything but directories, regular
files and symlinks (as links).
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator

from sandbox_common.tarstream.base import BLOCK, CHUNK, open_subdir

__all__ = ["tree_stream"]


def _header(name: str, kind: bytes, st: os.stat_result, size: int = 0,
            linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_data(fd: int, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes of the open file (zeros if it shrank meanwhile), then padding."""
    left = size
    while left > 0:
        data = os.read(fd, min(CHUNK, left))
        if not data:
            data = bytes(min(CHUNK, left))
        left -= len(data)
        yield data
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)


def tree_stream(root_fd: int) -> Iterator[bytes]:
    """The directory open as `root_fd` as an uncompressed tar stream (names relative to it).

    Directories, regular files and symlinks (as links, never followed) are sent; other
    files are skipped. Every directory and file is opened relative to its parent with
    O_NOFOLLOW, so a symlink swapped in meanwhile is not entered. Closes `root_fd`.
    """
    stack: list[tuple[int, str, Iterator[str]]] = []
    try:
        stack.append((root_fd, "", iter(sorted(os.listdir(root_fd)))))
        while stack:
            dir_fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(dir_fd)
                stack.pop()
                continue
            path = prefix + name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    child = open_subdir(dir_fd, name)
                    try:
                        children = sorted(os.listdir(child))
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append((child, path + "/", iter(children)))
                    yield _header(path, tarfile.DIRTYPE, st)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=dir_fd)
                    yield _header(path, tarfile.SYMTYPE, st, linkname=target)
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC, dir_fd=dir_fd)
                    try:
                        st = os.fstat(fd)
                        if not stat.S_ISREG(st.st_mode):
                            continue  # swapped for something else meanwhile
                        yield _header(path, tarfile.REGTYPE, st, st.st_size)
                        yield from _file_data(fd, st.st_size)
                    finally:
                        os.close(fd)
            except FileNotFoundError:
                continue  # removed while the tree was walked
        yield bytes(2 * BLOCK)
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)
