"""Plain result types returned by SandboxClient: frozen dataclasses, no behaviour.

Built by agentic_sandbox._client from the runtime's JSON answers. A non-zero exit code or a
command that hit its timeout is data here, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ArchiveSummary", "ExecutionResult", "FileEntry", "FileStat", "OutputChunk"]


@dataclass(frozen=True)
class ExecutionResult:
    """What one command did: its output, exit code, and whether a limit cut it short."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and was not killed by its timeout."""
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing in the sandbox's workspace."""

    name: str
    type: Literal["file", "directory", "symlink", "other"] | str
    size: int


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a streaming command's output, in the order the runtime sent it."""

    stream: Literal["stdout", "stderr"] | str
    data: str


@dataclass(frozen=True)
class FileStat:
    """What stat() says of a workspace path (symlinks followed, inside the workspace)."""

    path: str
    type: Literal["file", "directory", "symlink", "other"] | str
    size: int
    mode: int  # permission bits, e.g. 0o644
    mtime: float  # seconds since the epoch


@dataclass(frozen=True)
class ArchiveSummary:
    """What a directory transfer (upload_dir, download_dir) or a copy() wrote."""

    files: int
    directories: int
    symlinks: int
    bytes: int
    skipped: int = 0  # download_dir: absolute symlinks and those leading out, left out
