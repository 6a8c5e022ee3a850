"""The local side of file transfers: what upload_* reads and download_* writes on this machine.

Used by SandboxClient (agentic_sandbox._client) and AsyncSandboxClient
(agentic_sandbox._async_client: `AsyncBody` for uploads, `write_off_loop` for downloads): no
network IO here, only this machine's files. A directory goes out as the tar stream of
sandbox_common.tarstream (read file by file, 1 MiB at a time) and comes back through its
Extractor, the very code the runtime extracts with: absolute names, `..`, symlinks leading
out of the target directory, hard links and devices are refused, nothing is written under a
symlink, and a refused or broken stream leaves the target directory as it was. A file
comes back through a hidden temporary file renamed into place. Nothing here holds more than
one chunk of a transfer in memory (`write_off_loop`, for the async client: two, one being
written in a worker thread and the next one arriving), and nothing here touches the disk on
an event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, cast

from agentic_sandbox._aio import ended, off_loop
from agentic_sandbox._exceptions import SandboxError
from agentic_sandbox._models import ArchiveSummary
from sandbox_common.tarstream import ArchiveError, Extractor, tree_stream

__all__ = ["AsyncBody", "DirectoryDownload", "DirectoryUpload", "FileDownload", "Progress",
           "counting", "write_off_loop"]

Progress = Callable[[int], None]
R = TypeVar("R", covariant=True)
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class DirectoryUpload:
    """A local directory's tar stream as a request body: iterated afresh each time it is
    sent; `progress(n)` hears of every piece."""

    def __init__(self, local_dir: str | os.PathLike[str],
                 progress: Progress | None = None) -> None:
        self.local_dir = Path(local_dir)
        if not self.local_dir.is_dir():
            raise NotADirectoryError(f"{self.local_dir} is not a directory")
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        for data in tree_stream(os.open(self.local_dir, ROOT_FLAGS)):
            if self.progress is not None:
                self.progress(len(data))
            yield data


class AsyncBody:
    """A request body that is a sync iterable of bytes (a tree's tar stream), for httpx's
    AsyncClient: each piece is produced in a worker thread, so reading the files never
    blocks the event loop. Re-iterable like the body it wraps (a replayed call reads anew);
    deliberately not Iterable itself, or httpx would take it for a sync body."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces = iter(self.body)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            yield piece


class DirectoryDownload:
    """Extracts a downloaded tar stream into a local directory (made if missing); symlinks
    that are absolute or lead out of it are left out (ArchiveSummary.skipped counts them):
    a workspace may hold such links (a virtualenv's python), and they must not point
    anywhere on this machine."""

    def __init__(self, local_dir: str | os.PathLike[str], what: str,
                 progress: Progress | None = None) -> None:
        os.makedirs(local_dir, exist_ok=True)
        self.what = what
        self.progress = progress
        self._fd = os.open(local_dir, ROOT_FLAGS)
        try:
            self._extractor = Extractor(self._fd, skip_unsafe_links=True)
        except BaseException:
            os.close(self._fd)
            raise

    def feed(self, data: bytes) -> None:
        try:
            self._extractor.feed(data)
        except ArchiveError as exc:
            raise SandboxError(f"{self.what}: refused the sandbox's archive: {exc}") from None
        if self.progress is not None:
            self.progress(len(data))

    def finish(self) -> ArchiveSummary:
        try:
            summary = self._extractor.finish()
        except ArchiveError as exc:
            raise SandboxError(f"{self.what}: refused the sandbox's archive: {exc}") from None
        return ArchiveSummary(**summary.as_dict())

    def __enter__(self) -> DirectoryDownload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._extractor.close()
        finally:
            os.close(self._fd)


class FileDownload:
    """A downloaded file, written to a hidden file beside `local_path` and renamed over it
    by finish(); left without finish(), nothing stays behind."""

    def __init__(self, local_path: str | os.PathLike[str],
                 progress: Progress | None = None) -> None:
        self.path = Path(local_path)
        self.partial = self.path.with_name(f".{self.path.name}.part-{os.urandom(4).hex()}")
        self.progress = progress
        self.size = 0
        self._file: IO[bytes] | None = open(self.partial, "xb")  # noqa: SIM115

    def feed(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)
        if self.progress is not None:
            self.progress(len(data))

    def finish(self) -> int:
        assert self._file is not None
        self._file.close()
        self._file = None
        self.partial.replace(self.path)
        return self.size

    def __enter__(self) -> FileDownload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()


class Sink(Protocol[R]):
    """Where a download is written (FileDownload, DirectoryDownload): blocking calls."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> R: ...

    def __exit__(self, *exc_info: object) -> None: ...


async def write_off_loop(
        make: Callable[[], Sink[R]],
        receive: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
        progress: Progress | None = None) -> R:
    """An async download: `receive(feed)` awaits `feed(piece)` for each piece of the answer;
    all of the disk work (`make()` opening the target, each piece, the finish, the clean-up)
    runs in a worker thread, so the event loop never waits for the disk. A piece is written
    while the next one arrives, never more. `progress` hears of each piece on the loop once
    it is written, as in the sync client. Cancelled, it lets the work under way in the
    thread end, then cleans up after it (the target is never closed under a write)."""
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, make)
    writing: asyncio.Future[None] | None = None
    size = 0

    async def written() -> None:
        if writing is not None:
            await ended(writing)
            writing.result()  # a piece refused (a hostile archive) fails the download
            if progress is not None:
                progress(size)

    async def feed(data: bytes) -> None:
        nonlocal writing, size
        await written()
        writing, size = loop.run_in_executor(None, target.feed, data), len(data)

    try:
        await ended(opening)
        target = opening.result()
        await receive(feed)
        await written()
        return await off_loop(target.finish)
    finally:
        try:
            if writing is not None:  # left early: the piece in the thread ends first
                await ended(writing)
                writing.exception()  # retrieved: the error that matters is raised
        finally:
            # `opening` is done here (ended() saw to it); without a target there is
            # nothing to close, and its error is the one raised.
            if opening.exception() is None:
                await off_loop(opening.result().__exit__, None, None, None)


def counting(file: IO[bytes], progress: Progress) -> IO[bytes]:
    """`file`, its reads reported to `progress` (an upload's progress)."""
    return cast(IO[bytes], _Counting(file, progress))


class _Counting:
    """A binary file object whose reads are reported; everything else is the file's own."""

    def __init__(self, file: IO[bytes], progress: Progress) -> None:
        self._file = file
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
