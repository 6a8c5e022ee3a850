"""A local sandbox's workspace: a host folder holding a bounded file system of its own.

Called by LocalSandbox (agentic_sandbox._backends.local.sandbox) when it starts and is
destroyed, and by the stale clean-up. The workspace is a sparse ext4 image on a loop device
(else a tmpfs) of the template's ephemeral-storage, so writes inside end with ENOSPC and
the host's disk gives at most that much. Never removes files through a mount it could not
detach.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from agentic_sandbox._backends.local.runsc import RUNSC_TIMEOUT_S
from agentic_sandbox._backends.local.spec import SANDBOX_UID
from agentic_sandbox._exceptions import BackendUnavailableError
from agentic_sandbox._templates import LocalTemplate, parse_memory

__all__ = ["DISK_ENV", "WORKSPACE_IMAGE", "mount_workspace", "release_workspace",
           "remove_files", "workspace_bytes"]

log = logging.getLogger(__name__)

DISK_ENV: Final = "AGENTIC_SANDBOX_LOCAL_DISK"
DEFAULT_DISK_BYTES: Final = 2**30  # when a template sets no ephemeral-storage
MIN_DISK_BYTES: Final = 16 * 2**20  # the smallest ext4 worth making
WORKSPACE_IMAGE: Final = "workspace.img"


def workspace_bytes(template: LocalTemplate) -> int:
    """The workspace's size: the template's ephemeral-storage (limit, else request), else
    1 GiB (or $AGENTIC_SANDBOX_LOCAL_DISK); at least MIN_DISK_BYTES."""
    raw = os.environ.get(DISK_ENV)
    size = template.ephemeral_storage_bytes or (parse_memory(raw) if raw
                                                else DEFAULT_DISK_BYTES)
    return max(size, MIN_DISK_BYTES)


def _tool(name: str) -> str:
    """A system tool (mkfs.ext4, mount, umount), also from /sbin when PATH lacks it."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") \
        or name


def _quiet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUNSC_TIMEOUT_S, check=False)


def mount_workspace(workspace: Path, image: Path, size: int) -> str:
    """Give the (empty) workspace folder a filesystem of its own, `size` bytes: a sparse
    ext4 image on a loop device (disk-backed, like a pod's ephemeral storage), else a tmpfs
    of that size (memory-backed) where loop devices are missing. Writes past it fail with
    ENOSPC inside the sandbox; the host's disk gives at most `size`. Returns which."""
    with open(image, "wb") as f:
        f.truncate(size)
    made = _quiet([_tool("mkfs.ext4"), "-q", "-F", "-m", "0", "-O", "^has_journal",
                   "-E", f"root_owner={SANDBOX_UID}:{SANDBOX_UID}", str(image)])
    kind = "ext4 image"
    # discard: a file deleted inside gives its blocks back to the host at once.
    if made.returncode != 0 or _quiet([_tool("mount"), "-o",
                                        "loop,discard,nosuid,nodev,noatime",
                                        str(image), str(workspace)]).returncode != 0:
        image.unlink(missing_ok=True)
        kind = "tmpfs"
        done = _quiet([_tool("mount"), "-t", "tmpfs", "-o",
                       f"size={size},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID},"
                       "nosuid,nodev", "tmpfs", str(workspace)])
        if done.returncode != 0:
            raise BackendUnavailableError(
                "cannot give the sandbox's workspace a bounded filesystem (no loop device "
                f"for an ext4 image, no tmpfs mount): {done.stderr.strip()}")
    with contextlib.suppress(OSError):
        os.rmdir(workspace / "lost+found")
    os.chown(workspace, SANDBOX_UID, SANDBOX_UID)
    os.chmod(workspace, 0o700)
    return kind


def release_workspace(workspace: Path) -> None:
    """Unmount the workspace's filesystem (lazily if something still holds it), then
    remove the folder. Never removes files through a mount it could not detach."""
    if os.path.ismount(workspace) and \
            _quiet([_tool("umount"), str(workspace)]).returncode != 0:
        _quiet([_tool("umount"), "-l", str(workspace)])
    if os.path.ismount(workspace):
        log.warning("could not unmount the workspace %s", workspace)
        return
    remove_files(workspace)


def remove_files(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
