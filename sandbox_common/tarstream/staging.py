"""Moving an extraction's staged tree into its root: checked whole first, then renamed in.

Used by sandbox_common.tarstream.extractor (Extractor.finish) only. Every conflict (a
directory over a non-directory or the reverse) is found before the first rename, so a
refused stream leaves the root as it was; directories are entered with open_subdir, never
through a symlink. It must not copy file data: entries move by rename(2) within one
filesystem.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from sandbox_common.tarstream.base import ArchiveError, open_subdir

__all__ = ["move_into_place"]


def move_into_place(stage_fd: int, root_fd: int) -> None:
    """Move everything staged in `stage_fd` into `root_fd` (ArchiveError on a conflict,
    before anything moved)."""
    _check_merge(stage_fd, root_fd, "")
    _merge(stage_fd, root_fd)


def _is_dir(fd: int, name: str) -> bool | None:
    """lstat's answer: a directory, something else, or None (missing)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def _check_merge(src_fd: int, dst_fd: int, prefix: str) -> None:
    """Refuse before anything moves: a directory over a non-directory or the reverse."""
    for name in os.listdir(src_fd):
        src_dir, dst_dir = _is_dir(src_fd, name), _is_dir(dst_fd, name)
        if dst_dir is None:
            continue
        if src_dir != dst_dir:
            kind = "a directory" if dst_dir else "not a directory"
            raise ArchiveError(f"entry {prefix + name!r}: exists and is {kind}")
        if src_dir:
            with _opened(src_fd, name) as sub_src, _opened(dst_fd, name) as sub_dst:
                _check_merge(sub_src, sub_dst, prefix + name + "/")


def _merge(src_fd: int, dst_fd: int) -> None:
    """Move every staged entry into place: new ones whole, files and links over old ones,
    directories merged."""
    for name in os.listdir(src_fd):
        if _is_dir(src_fd, name) and _is_dir(dst_fd, name):
            with _opened(src_fd, name) as sub_src, _opened(dst_fd, name) as sub_dst:
                _merge(sub_src, sub_dst)
        else:
            os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


@contextlib.contextmanager
def _opened(dir_fd: int, name: str) -> Iterator[int]:
    try:
        fd = open_subdir(dir_fd, name)
    except OSError:
        raise ArchiveError(f"{name!r}: changed while the archive was put in place") from None
    try:
        yield fd
    finally:
        os.close(fd)
