"""Operations the command line and the MCP server share, built on SandboxClient's public API.

Called by agentic_sandbox._cli and agentic_sandbox._mcp. Each is a plain function of an open
SandboxClient, so a later client feature (a runtime route to delete files, directory
transfers) replaces one body here and both front ends get it. Nothing here may reach past
the client's public methods into a backend or the runtime.
"""

from __future__ import annotations

import json
import posixpath
from typing import Final

from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxRequestError

__all__ = ["describe", "exit_status", "is_directory", "remove"]

TIMEOUT_STATUS: Final = 124  # what timeout(1) exits with when it killed the command


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
        return sandbox.stat(path).type == "directory"
    except SandboxRequestError as exc:
        if exc.status_code in (400, 404):
            return False
        raise


def remove(sandbox: SandboxClient, path: str, *, recursive: bool = False,
           force: bool = False) -> bool:
    """Remove a file, symlink or (with `recursive`) directory tree from the workspace.

    SandboxClient.remove: the runtime confines the path as every file route does (403
    outside, symlinks on the way resolved and checked) and never follows a symlink it
    removes, nor one inside a tree. The workspace itself and `.`/`..` names are refused
    here, before anything is asked.

    Returns False when nothing was there (and `force` is set); raises SandboxError otherwise.
    """
    trimmed = path.rstrip("/")
    if posixpath.basename(trimmed) in ("", ".", ".."):
        raise ValueError(f"refusing to remove {path!r}: name a file or directory inside the "
                         "workspace")
    try:
        sandbox.remove(trimmed, recursive=recursive)
    except SandboxRequestError as exc:
        if exc.status_code == 404 and force:
            return False  # nothing there, or its parent does not exist
        raise
    return True
