"""Path confinement: every path a request names stays inside the workspace, symlinks included.

Called by files.py (download, list, exists, the upload's destination) and commands.py (an
/execute `cwd`). `resolve()` resolves symlinks and `..` and refuses anything outside the
workspace (403) before the filesystem is touched further; `check_opened()` checks again, on
what was actually opened, through /proc/self/fd (a symlink swapped in between cannot
redirect us); `exists_inside()` walks a path without following any symlink.

It decides where a path leads, and nothing else: it must not create, read or write files.
Its errors are the answers: 403 outside, 400 malformed, 404 a path that kept changing.
"""

from __future__ import annotations

import contextlib
import os
import stat

from sandbox_runtime.errors import BadRequest, Forbidden, NotFound

MAX_PATH = 4096
NAME_MAX = 255  # bytes per path component on every Linux filesystem we serve from
# A path that changes while it is resolved (a component renamed or swapped for a symlink by
# code in the sandbox) is looked at again this many times before the request gives up.
RESOLVE_ATTEMPTS = 4


def is_inside(base: str, real: str) -> bool:
    return real == base or real.startswith(base.rstrip("/") + "/")


def relative(base: str, real: str) -> str:
    return os.path.relpath(real, base) if real != base else "."


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


def check_opened(base: str, fd: int, user_path: str) -> None:
    """Containment again on what was actually opened (a symlink may have been swapped in);
    closes `fd` when it is outside."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc: the resolve() check stands alone
    if not is_inside(base, real):
        os.close(fd)
        raise Forbidden(f"path: {user_path!r} is outside the workspace")


def exists_inside(base: str, real: str) -> bool | None:
    """Whether `real` (symlink-free when resolve() saw it) exists, walked from the workspace
    one component at a time with O_PATH|O_NOFOLLOW: no symlink is followed, so the walk
    cannot leave the workspace. None: a symlink appeared on the way (a race) or the
    directory reached was moved outside; the caller resolves again."""
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
