"""What the tar writer, the extractor and the staging step share: blocks, errors, safe steps.

Used by sandbox_common.tarstream's writer, extractor and staging modules, and (through
sandbox_common.tarstream) by the runtime's file operations, which enter workspace
directories with open_subdir too. It must not follow a symlink, and imports nothing of the
servers or the client.
"""

from __future__ import annotations

import errno
import os
import stat

BLOCK = 512
CHUNK = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Deepest tree the file API copies or takes in (levels of directories below its root). Each
# level of a walk holds descriptors and a Python frame: trees thousands of levels deep ran
# them out (RecursionError: a 500 on the runtime, a bare exception on the client).
MAX_TREE_DEPTH = 256

__all__ = ["BLOCK", "CHUNK", "DIR_FLAGS", "MAX_TREE_DEPTH", "ArchiveError", "open_subdir",
           "padded"]


def open_subdir(dir_fd: int, name: str) -> int:
    """The directory `name` in `dir_fd`, opened without following a symlink: OSError ELOOP
    for a symlink, ENOTDIR for anything else that is not a directory.

    O_NOFOLLOW alone is not enough: some gVisor releases (runsc 20221219 here) follow a
    final symlink when O_DIRECTORY is given too. So the entry is lstat'ed first and the
    opened directory must be that very inode (a symlink swapped in between is caught).
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symlink", name)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise OSError(errno.ELOOP, "changed while it was opened", name)
    return fd


class ArchiveError(ValueError):
    """The stream is refused; `too_large`: it passed a size or entry bound."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def padded(size: int) -> int:
    """`size` rounded up to whole tar blocks."""
    return -(-size // BLOCK) * BLOCK
