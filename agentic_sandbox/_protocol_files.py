"""The runtime's file calls without IO: what each sends and how its answer becomes a result.

Used by SandboxClient and AsyncSandboxClient (agentic_sandbox._client, _async_client), which
send them: write/read a file, list, exists, stat, mkdir, remove, move, copy, and a directory
in and out as a tar stream (the stream itself is agentic_sandbox._transfer's). Each function
checks its arguments and returns an agentic_sandbox._protocol.Call; the replay rule and the
error mapping stay there. Nothing here sends a byte or touches a local file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from agentic_sandbox._models import ArchiveSummary, FileEntry, FileStat
from agentic_sandbox._protocol import Call, typed, unexpected, url_path

__all__ = ["archive_in_call", "archive_out_call", "copy_call", "download_call", "exists_call",
           "list_call", "mkdir_call", "move_call", "remove_call", "stat_call", "upload_call"]


def upload_call(path: str, content: str | bytes | IO[bytes],
                timeout: float | None) -> Call[None]:
    """write(): the bytes, or a binary file object streamed from its start (it is read a
    piece at a time, never whole; sent again, it is read again from the start)."""
    data: bytes | IO[bytes]
    if isinstance(content, str):
        data = content.encode("utf-8")
    elif isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
    elif callable(getattr(content, "read", None)) and callable(getattr(content, "seek", None)):
        data = content
    else:
        raise TypeError(f"content must be str, bytes or a binary file object, not "
                        f"{type(content).__name__}")
    _check_path(path)
    return Call("POST", "/upload", timeout, lambda answer: None,
                files={"file": (path, data, "application/octet-stream")})


def _check_path(path: str, what: str = "path") -> None:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} must be a non-empty string")


def download_call(path: str, timeout: float | None) -> Call[bytes]:
    return Call("GET", "/download/" + url_path(path), timeout, bytes, raw=True)


def _entries(answer: Any) -> list[FileEntry]:
    if not isinstance(answer, list):
        raise unexpected("GET /list")
    return [FileEntry(name=typed(e, "name", str), type=typed(e, "type", str),
                      size=typed(e, "size", int)) for e in answer]


def list_call(path: str, timeout: float | None) -> Call[list[FileEntry]]:
    return Call("GET", "/list/" + url_path(path), timeout, _entries)


def exists_call(path: str, timeout: float | None) -> Call[bool]:
    return Call("GET", "/exists/" + url_path(path), timeout,
                lambda answer: typed(answer, "exists", bool))


def _stat(answer: Any) -> FileStat:
    if not isinstance(answer, dict):
        raise unexpected("GET /stat")
    return FileStat(path=typed(answer, "path", str), type=typed(answer, "type", str),
                    size=typed(answer, "size", int), mode=typed(answer, "mode", int),
                    mtime=float(typed(answer, "mtime", (int, float))))


def stat_call(path: str, timeout: float | None) -> Call[FileStat]:
    return Call("GET", "/stat/" + url_path(path), timeout, _stat)


def mkdir_call(path: str, parents: bool, timeout: float | None) -> Call[None]:
    _check_path(path)
    return Call("POST", "/mkdir", timeout, lambda answer: None,
                json={"path": path, "parents": bool(parents)})


def remove_call(path: str, recursive: bool, timeout: float | None) -> Call[None]:
    _check_path(path)
    return Call("POST", "/remove", timeout, lambda answer: None,
                json={"path": path, "recursive": bool(recursive)})


def move_call(source: str, destination: str, timeout: float | None) -> Call[None]:
    _check_path(source, "source")
    _check_path(destination, "destination")
    return Call("POST", "/move", timeout, lambda answer: None,
                json={"source": source, "destination": destination})


def archive_summary(answer: Any) -> ArchiveSummary:
    if not isinstance(answer, dict):
        raise unexpected("an archive or copy")
    return ArchiveSummary(files=typed(answer, "files", int, 0),
                          directories=typed(answer, "directories", int, 0),
                          symlinks=typed(answer, "symlinks", int, 0),
                          bytes=typed(answer, "bytes", int, 0),
                          skipped=typed(answer, "skipped", int, 0))


def copy_call(source: str, destination: str, timeout: float | None) -> Call[ArchiveSummary]:
    _check_path(source, "source")
    _check_path(destination, "destination")
    return Call("POST", "/copy", timeout, archive_summary,
                json={"source": source, "destination": destination})


def archive_in_call(remote_dir: str, body: Iterable[bytes],
                    timeout: float | None) -> Call[ArchiveSummary]:
    """upload_dir(): `body` is the directory's tar stream (re-iterable), sent chunked."""
    _check_path(remote_dir, "remote_dir")
    return Call("POST", "/archive/" + url_path(remote_dir), timeout, archive_summary,
                content=body, headers={"Content-Type": "application/x-tar"})


def archive_out_call(remote_dir: str, timeout: float | None) -> Call[None]:
    """download_dir(): the answer is a tar stream, read as it comes (not decoded here)."""
    return Call("GET", "/archive/" + url_path(remote_dir), timeout, lambda body: None,
                raw=True)

