"""Plain result types returned by SandboxClient: frozen dataclasses, no behaviour.

Built by agentic_sandbox._client from the runtime's JSON answers. A non-zero exit code or a
command that hit its timeout is data here, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ArchiveSummary", "ExecutionResult", "FileEntry", "FileStat", "OutputChunk",
           "ProcessInfo", "ProcessOutput"]


@dataclass(frozen=True)
class ExecutionResult:
    """What one command did: its output, exit code, and whether a limit cut it short.

    A command whose shell was killed by a signal (its own, another process's, or the
    runtime's at the timeout) has `exit_code` 128 + the signal's number, as a shell
    reports it, and `signal` its name ("SIGKILL"); otherwise `signal` is None. A shell that
    exits 137 because its child was killed reports 137 and no signal: only the shell's own
    death is known for certain.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    signal: str | None = None

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


@dataclass(frozen=True)
class ProcessInfo:
    """A background process (sandbox.start()): running, or how it ended.

    `exit_code` and `signal` are None while it runs; then as ExecutionResult's (128 + n and
    the signal's name when a signal killed it: "SIGKILL" after kill()). `timed_out`: its own
    timeout ended it. Times are seconds since the epoch, on the sandbox's clock.
    """

    id: str
    command: str
    running: bool
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False
    started_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True)
class ProcessOutput:
    """What a background process has written so far: the first `max_output_bytes` of each
    stream (1 MiB by default), and whether more was cut; `info` is its state then."""

    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    info: ProcessInfo
