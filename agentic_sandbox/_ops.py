"""Operations the command line and the MCP server share, built on SandboxClient's public API.

Called by agentic_sandbox._cli and agentic_sandbox._mcp. Each is a plain function of an open
SandboxClient, so a later client feature (a runtime route to delete files, directory
transfers) replaces one body here and both front ends get it. Nothing here may reach past
the client's public methods into a backend or the runtime.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Final

from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxError, SandboxRequestError

__all__ = ["describe", "exit_status", "is_directory", "remove"]

TIMEOUT_STATUS: Final = 124  # what timeout(1) exits with when it killed the command
# rm's own refusals, told apart from rm's failures by these statuses of its shell.
_MISSING, _IS_DIRECTORY = 3, 4
_REMOVE_SCRIPT: Final = (
    'if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 3; fi; '
    'if [ -d "$1" ] && [ ! -L "$1" ] && [ "$2" != -r ]; then exit 4; fi; '
    'exec rm -rf -- "$1"')


def describe(error: BaseException) -> str:
    """One line for a person or a model: the runtime's own message when it sent one."""
    message = str(error)
    if isinstance(error, SandboxRequestError):
        try:
            body = json.loads(error.body)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            message = f"{body['error']} ({error.status_code})"
    return " ".join(message.split()) or type(error).__name__


def exit_status(exit_code: int | None, timed_out: bool) -> int:
    """A command's status as a process exit status: 124 when its timeout killed it, 128+n
    when signal n did (the runtime reports -n), else its own."""
    if timed_out:
        return TIMEOUT_STATUS
    if exit_code is None:
        return 1
    if exit_code < 0:
        return 128 - exit_code
    return exit_code if exit_code <= 255 else 255


def is_directory(sandbox: SandboxClient, path: str) -> bool:
    """Whether a workspace path is a directory (following symlinks, as the runtime does)."""
    try:
        sandbox.list(path)
    except SandboxRequestError as exc:
        if exc.status_code in (400, 404):
            return False
        raise
    return True


def remove(sandbox: SandboxClient, path: str, *, recursive: bool = False,
           force: bool = False) -> bool:
    """Remove a file, symlink or (with `recursive`) directory tree from the workspace.

    Confined exactly as the runtime confines its own file routes: the parent goes to the
    runtime as the command's `cwd`, which the runtime resolves (symlinks and `..`
    included) and refuses with 403 when it leaves the workspace; the last component is one
    plain name (no `/`, `.` or `..`) removed from inside that directory by `rm -rf -- NAME`,
    which never follows it, nor any symlink inside a tree it removes. Only code already
    running in the sandbox, with the same rights, could race it.

    Returns False when nothing was there (and `force` is set); raises SandboxError otherwise.
    """
    parent, name = posixpath.split(path.rstrip("/")) if path.strip("/") else ("", "")
    if name in ("", ".", ".."):
        raise ValueError(f"refusing to remove {path!r}: name a file or directory inside the "
                         "workspace")
    command = f"sh -c {shlex.quote(_REMOVE_SCRIPT)} rm {shlex.quote(name)}"
    if recursive:
        command += " -r"
    try:
        result = sandbox.run(command, cwd=parent or ".")
    except SandboxRequestError as exc:
        if exc.status_code == 404 and force:
            return False  # the parent does not exist: nothing to remove
        raise
    if result.exit_code == _MISSING:
        if force:
            return False
        raise SandboxError("no such file or directory")
    if result.exit_code == _IS_DIRECTORY:
        raise SandboxError("is a directory (use -r to remove it and its contents)")
    if not result.ok:
        raise SandboxError(result.stderr.strip() or "rm failed")
    return True
