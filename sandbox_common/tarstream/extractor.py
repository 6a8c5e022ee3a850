"""Extracting a tar stream into a directory as its bytes are fed, by the refusal rules.

Used by the runtime (POST /archive/*, sandbox_runtime.fileops) and the client (download_dir,
agentic_sandbox._transfer), through sandbox_common.tarstream, whose docstring lists what is
refused. Extractor parses the stream itself (tarfile only reads single headers), writes each
entry into a hidden staging directory inside the root and, once the stream is whole, has
sandbox_common.tarstream.staging move it into place. It does no network IO (a sync and an
async caller feed it alike), must not follow a symlink nor write outside the root, and
holds at most one chunk of file data and one extended header (MAX_EXTRA_HEADER).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass

from sandbox_common.tarstream.base import (
    BLOCK,
    MAX_TREE_DEPTH,
    ArchiveError,
    open_subdir,
    padded,
)
from sandbox_common.tarstream.staging import move_into_place

__all__ = ["MAX_EXTRA_HEADER", "STAGING_PREFIX", "Extractor", "Summary", "safe_parts"]

# A pax extended header or a GNU long name/link record is read whole: bounded.
MAX_EXTRA_HEADER = 64 * 1024
STAGING_PREFIX = ".archive-"
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


@dataclass
class Summary:
    """What an extraction wrote."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # symlinks leading out, left out (Extractor's skip_unsafe_links)

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "directories": self.directories,
                "symlinks": self.symlinks, "bytes": self.bytes, "skipped": self.skipped}


def safe_parts(name: str, what: str = "entry") -> list[str]:
    """The components of a relative entry name; ArchiveError for absolute names and `..`."""
    if not name or name.startswith("/") or "\0" in name:
        raise ArchiveError(f"{what} {name[:200]!r}: absolute or empty names are refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{what} {name[:200]!r}: '..' components are refused")
    if len(parts) > MAX_TREE_DEPTH + 1:
        raise ArchiveError(f"{what} {name[:200]!r}: more than {MAX_TREE_DEPTH} directories "
                           "deep")
    return parts


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        if space < 0:
            raise ArchiveError("a malformed pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ArchiveError("a malformed pax header") from None
        record = data[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveError("a malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class Extractor:
    """Writes a tar stream into a directory as its bytes are fed (sandbox_common.tarstream).

        with Extractor(root_fd, max_bytes=..., max_entries=...) as x:
            for data in chunks:
                x.feed(data)
            summary = x.finish()

    `root_fd` stays the caller's. Leaving the `with` block without finish() (an error)
    removes everything extracted so far. `skip_unsafe_links`: a symlink that is absolute
    or leads out of the root is left out (and counted) instead of refusing the stream.
    """

    def __init__(self, root_fd: int, *, max_bytes: int | None = None,
                 max_entries: int | None = None, skip_unsafe_links: bool = False) -> None:
        self.root_fd = root_fd
        self.skip_unsafe_links = skip_unsafe_links
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.summary = Summary()
        self.entries = 0
        self._buf = bytearray()
        self._need = BLOCK  # bytes wanted by the current state
        self._state = "header"
        self._extra_kind = b""
        self._extra_size = 0
        # Overrides for the next header, from pax or GNU long-name records.
        self._pending: dict[str, str] = {}
        self._file_fd: int | None = None
        self._file_left = 0
        self._file_name = ""
        self._mtime = 0
        self._skip = 0
        self._ended = False
        self.stage_name = f"{STAGING_PREFIX}{os.urandom(6).hex()}"
        os.mkdir(self.stage_name, 0o700, dir_fd=root_fd)
        self.stage_fd: int | None = open_subdir(root_fd, self.stage_name)

    # -- the stream

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._ended:
                return  # after the end-of-archive blocks: padding, ignored
            if self._state == "data":
                take = min(len(view), self._file_left)
                self._write(view[:take])
                view = view[take:]
                self._file_left -= take
                if self._file_left == 0:
                    self._end_file()
                continue
            if self._state == "skip":
                take = min(len(view), self._skip)
                view = view[take:]
                self._skip -= take
                if self._skip == 0:
                    self._state = "header"
                    self._need = BLOCK
                continue
            take = min(len(view), self._need - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                block, self._buf = bytes(self._buf), bytearray()
                if self._state == "header":
                    self._on_header(block)
                else:
                    self._on_extra(block)

    def finish(self) -> Summary:
        """The stream ended: check it was whole, then move the entries into place."""
        if not self._ended and (self._state != "header" or self._buf):
            raise ArchiveError("the archive ended early")
        assert self.stage_fd is not None
        move_into_place(self.stage_fd, self.root_fd)
        return self.summary

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the staging directory and whatever is still in it."""
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        if self.stage_fd is not None:
            os.close(self.stage_fd)
            self.stage_fd = None
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.stage_name, dir_fd=self.root_fd)

    # -- entries

    def _on_header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ArchiveError(f"a malformed tar header ({exc})") from None
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK, tarfile.SOLARIS_XHDTYPE):
            if info.size > MAX_EXTRA_HEADER:
                raise ArchiveError(f"an extended header of {info.size} bytes (at most "
                                   f"{MAX_EXTRA_HEADER})", too_large=True)
            self._extra_kind = info.type
            self._state, self._need = "extra", padded(info.size)
            self._extra_size = info.size
            if self._need == 0:
                self._on_extra(b"")
            return
        values, self._pending = self._pending, {}
        name = values.get("path", info.name)
        linkname = values.get("linkpath", info.linkname)
        size = info.size
        if "size" in values:
            try:
                size = int(values["size"])
            except ValueError:
                raise ArchiveError("a malformed pax size") from None
        self._entry(info, name, linkname, size)

    def _on_extra(self, block: bytes) -> None:
        data = block[:self._extra_size]
        kind = self._extra_kind
        if kind == tarfile.GNUTYPE_LONGNAME:
            self._pending["path"] = data.split(b"\0", 1)[0].decode("utf-8",
                                                                          "surrogateescape")
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self._pending["linkpath"] = data.split(b"\0", 1)[0].decode(
                "utf-8", "surrogateescape")
        elif kind != tarfile.XGLTYPE:  # global headers: nothing we use
            self._pending.update(_pax_records(data))
        self._state, self._need = "header", BLOCK

    def _entry(self, info: tarfile.TarInfo, name: str, linkname: str, size: int) -> None:
        self.entries += 1
        if self.max_entries is not None and self.entries > self.max_entries:
            raise ArchiveError(f"more than {self.max_entries} entries", too_large=True)
        parts = safe_parts(name)
        shown = name[:200]
        if not parts:
            if info.type == tarfile.DIRTYPE:
                return  # "./": the root itself
            raise ArchiveError(f"entry {shown!r}: names the root")
        if info.type in FILE_TYPES:
            self.summary.bytes += size
            if self.max_bytes is not None and self.summary.bytes > self.max_bytes:
                raise ArchiveError(f"larger than the {self.max_bytes} byte limit",
                                   too_large=True)
            parent = self._parent(parts, shown)
            try:
                self._clear(parent, parts[-1], shown)
                self._file_fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                        | os.O_NOFOLLOW | os.O_CLOEXEC,
                                        (info.mode & 0o777) | 0o600, dir_fd=parent)
            finally:
                os.close(parent)
            self.summary.files += 1
            self._file_name, self._file_left, self._mtime = shown, size, int(info.mtime)
            self._skip = padded(size) - size
            if size:
                self._state = "data"
            else:
                self._end_file()
        elif info.type == tarfile.DIRTYPE:
            os.close(self._parent([*parts, ""], shown))
            self.summary.directories += 1
            self._after_entry(size)
        elif info.type == tarfile.SYMTYPE:
            problem = _link_problem(parts, linkname)
            if problem and self.skip_unsafe_links:
                self.summary.skipped += 1
                self._after_entry(size)
                return
            if problem:
                raise ArchiveError(f"entry {shown!r}: {problem}")
            parent = self._parent(parts, shown)
            try:
                self._clear(parent, parts[-1], shown)
                os.symlink(linkname, parts[-1], dir_fd=parent)
            finally:
                os.close(parent)
            self.summary.symlinks += 1
            self._after_entry(size)
        elif info.type == tarfile.LNKTYPE:
            raise ArchiveError(f"entry {shown!r}: hard links are refused")
        else:
            raise ArchiveError(f"entry {shown!r}: devices, FIFOs and other special files "
                               "are refused")

    def _after_entry(self, size: int) -> None:
        """Skip whatever data a non-file entry claims to carry."""
        self._skip = padded(size)
        self._state = "skip" if self._skip else "header"
        self._need = BLOCK

    def _write(self, data: memoryview) -> None:
        assert self._file_fd is not None
        while data:
            try:
                data = data[os.write(self._file_fd, data):]
            except OSError as exc:
                raise ArchiveError(f"entry {self._file_name!r}: cannot be stored "
                                   f"({exc.strerror})", too_large=True) from None

    def _end_file(self) -> None:
        assert self._file_fd is not None
        with contextlib.suppress(OSError):
            os.utime(self._file_fd, (self._mtime, self._mtime))
        os.close(self._file_fd)
        self._file_fd = None
        self._state = "skip" if self._skip else "header"
        self._need = BLOCK

    def _parent(self, parts: list[str], shown: str) -> int:
        """The staged directory holding parts[-1], made as needed, walked without following
        any symlink (an entry under a symlink is refused)."""
        assert self.stage_fd is not None
        fd = os.dup(self.stage_fd)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    step = open_subdir(fd, part)
                except OSError:
                    raise ArchiveError(f"entry {shown!r}: a parent is a symlink or not a "
                                       "directory") from None
                os.close(fd)
                fd = step
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _clear(parent: int, name: str, shown: str) -> None:
        """Make room for a later entry of the same name (a file or link replaces one)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ArchiveError(f"entry {shown!r}: a directory of that name came first")
        os.unlink(name, dir_fd=parent)


def _link_problem(parts: list[str], linkname: str) -> str:
    """Why a symlink at `parts` to `linkname` is refused ("" when it stays in the root)."""
    if not linkname or linkname.startswith("/"):
        return "symlink to an absolute path"
    target = posixpath.normpath(posixpath.join(*parts[:-1], linkname))
    if target == ".." or target.startswith("../"):
        return "symlink pointing outside"
    return ""
