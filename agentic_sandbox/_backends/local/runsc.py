"""runsc itself for the local backend: finding it, its state folder, and its commands.

Called by the rest of agentic_sandbox._backends.local (and by the named-sandbox holder for the
state folder). Every runsc call goes through runsc_argv(), under the backend's own `--root`
(`<state>/runsc`), so other runsc users on this machine are never touched. This module must
never fall back to anything outside gVisor: when runsc cannot be used it raises
BackendUnavailableError saying what to do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Final

from agentic_sandbox._exceptions import BackendUnavailableError

__all__ = ["ID_PREFIX", "PLATFORM_ENV", "RUNSC_TIMEOUT_S", "STATE_ENV", "default_state_dir",
           "delete_container", "list_containers", "private_state", "runsc_argv",
           "runsc_binary"]

STATE_ENV: Final = "AGENTIC_SANDBOX_STATE_DIR"
RUNSC_ENV: Final = "AGENTIC_SANDBOX_RUNSC"
PLATFORM_ENV: Final = "AGENTIC_SANDBOX_RUNSC_PLATFORM"
ID_PREFIX: Final = "agentsbx"  # sandbox ids: agentsbx-<owner pid>-<8 hex>
RUNSC_TIMEOUT_S: Final = 30.0


def default_state_dir() -> Path:
    """The state folder when none is given: $AGENTIC_SANDBOX_STATE_DIR, else
    ~/.cache/agent-sandbox/local (runsc root, bundles, workspaces, named sandboxes)."""
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "agent-sandbox" / "local")


def private_state(state_dir: Path, *folders: str) -> None:
    """Make the (resolved) state folder and its `folders` if missing, mode 0700, and check
    that nobody but this user (and root) can change what they hold.

    Root writes bundles, owner records and mount points under the state folder and hands
    them to runsc and mount: a folder on the way that another user owns or may write lets
    that user swap one of them for a symlink (root then writes or mounts where that user
    chose) or for an OCI spec of their own. So every folder from / down to the state folder
    is root's or ours and writable by nobody else unless sticky (like /tmp), and the state
    folder and its folders are ours, real folders, and private. Raises
    BackendUnavailableError naming the first folder that is not."""
    uid = os.geteuid()
    ours = [state_dir, *(state_dir / name for name in folders)]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Checked from / down before anything is made inside the state folder.
    for folder in (*reversed(state_dir.parents), *ours):
        problem = ""
        try:
            if folder != state_dir and folder in ours:
                folder.mkdir(exist_ok=True, mode=0o700)
            info = os.lstat(folder)
        except OSError as exc:  # a dangling symlink where a folder should be, say
            problem = f"cannot be made a folder ({exc.strerror})"
        else:
            if not stat.S_ISDIR(info.st_mode):
                problem = "is not a folder (a symlink?)"
            elif info.st_uid != uid and (folder in ours or info.st_uid != 0):
                problem = f"belongs to uid {info.st_uid}"
            elif folder not in ours and info.st_mode & 0o022 and \
                    not info.st_mode & stat.S_ISVTX:
                problem = "may be written by other users"
        if problem:
            raise BackendUnavailableError(
                f"the local backend's state folder {state_dir} is not private: {folder} "
                f"{problem}, so another user could replace what is written there as root. "
                f"Set $AGENTIC_SANDBOX_STATE_DIR (or state_dir=) to a folder only you can "
                f"change, such as /root/.cache/agent-sandbox/local (the default is under "
                f"$HOME, which sudo may have kept as another user's)")
        if folder in ours:
            os.chmod(folder, 0o700)


def runsc_binary() -> str:
    """Path of a usable runsc, or BackendUnavailableError saying what to do."""
    path = os.environ.get(RUNSC_ENV) or shutil.which("runsc")
    if not path or not os.access(path, os.X_OK):
        raise BackendUnavailableError(
            "the local backend needs gVisor's runsc, which is not installed: run "
            "`apt-get install runsc` (or `make system`), or use a cluster with "
            "backend='kubernetes' / AGENTIC_SANDBOX_BACKEND=kubernetes")
    if os.geteuid() != 0:
        raise BackendUnavailableError(
            "the local backend starts gVisor sandboxes with runsc, which needs root here: "
            "run as root (e.g. with sudo), or use backend='kubernetes'")
    if importlib.util.find_spec("sandbox_runtime") is None or \
            importlib.util.find_spec("flask") is None:
        raise BackendUnavailableError(
            "the local backend runs sandbox-runtime inside gVisor, and it is not installed "
            "in this Python: pip install 'agent-sandbox[runtime]'")
    return path


def runsc_argv(runsc: str, state_dir: Path, *args: str) -> list[str]:
    """A runsc command under the backend's own root."""
    return [runsc, "--root", str(state_dir / "runsc"), *args]


def delete_container(runsc: str, state_dir: Path, sandbox_id: str) -> None:
    """`runsc delete --force`; quietly nothing when it is not there."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(runsc_argv(runsc, state_dir, "delete", "--force", sandbox_id),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=RUNSC_TIMEOUT_S, check=False)


def list_containers(runsc: str, state_dir: Path) -> list[str]:
    """Ids of the containers runsc knows under our root ([] when it cannot say)."""
    try:
        return subprocess.run(runsc_argv(runsc, state_dir, "list", "-quiet"),
                              capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S,
                              check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return []
