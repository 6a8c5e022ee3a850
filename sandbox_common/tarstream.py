"""Directory trees as tar streams, both ways, never following a symlink nor leaving the root.

Used by the runtime (GET and POST /archive/*: a workspace directory out and in) and by the
client (SandboxClient.upload_dir and download_dir: a directory of this machine out and in),
so the rules are the same on both ends of a transfer. Streams are made and taken a piece at
a time: `tree_stream()` yields a directory as a tar stream read file by file, 1 MiB at a
time; `Extractor` is fed the stream's bytes as they arrive (no IO of its own to the network,
so a sync and an async caller share it) and writes each entry as it comes. Neither ever
holds more than one chunk of file data, nor a header larger than MAX_EXTRA_HEADER.

What an extraction refuses (ArchiveError, nothing outside the root is ever touched):
absolute names, `..` components, symlinks whose target is absolute or leads out of the
root, hard links, devices, FIFOs and other special files, an entry under a symlink (every
step is opened with O_NOFOLLOW), more than `max_entries` entries or `max_bytes` bytes of
files (`too_large`: the runtime answers 413). Entries land in a hidden staging directory
inside the root first and are moved into place only once the whole stream was read and
checked, so a refused or broken stream leaves the root as it was.

It must not import anything of the servers or the client: both import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 512
CHUNK = 1024 * 1024
# A pax extended header or a GNU long name/link record is read whole: bounded.
MAX_EXTRA_HEADER = 64 * 1024
STAGING_PREFIX = ".archive-"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def open_subdir(dir_fd: int, name: str) -> int:
    """The directory `name` in `dir_fd`, opened without following a symlink: OSError ELOOP
    for a symlink, ENOTDIR for anything else that is not a directory.

    O_NOFOLLOW alone is not enough: some gVisor releases (runsc 20221219 here) follow a
    final symlink when O_DIRECTORY is given too. So the entry is lstat'ed first and the
    opened directory must be that very inode (a symlink swapped in between is caught).
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symlink", name)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise OSError(errno.ELOOP, "changed while it was opened", name)
    return fd


class ArchiveError(ValueError):
    """The stream is refused; `too_large`: it passed a size or entry bound."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


# -- writing -------------------------------------------------------------------------------


def _header(name: str, kind: bytes, st: os.stat_result, size: int = 0,
            linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_data(fd: int, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes of the open file (zeros if it shrank meanwhile), then padding."""
    left = size
    while left > 0:
        data = os.read(fd, min(CHUNK, left))
        if not data:
            data = bytes(min(CHUNK, left))
        left -= len(data)
        yield data
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)


def tree_stream(root_fd: int) -> Iterator[bytes]:
    """The directory open as `root_fd` as an uncompressed tar stream (names relative to it).

    Directories, regular files and symlinks (as links, never followed) are sent; other
    files are skipped. Every directory and file is opened relative to its parent with
    O_NOFOLLOW, so a symlink swapped in meanwhile is not entered. Closes `root_fd`.
    """
    stack: list[tuple[int, str, Iterator[str]]] = []
    try:
        stack.append((root_fd, "", iter(sorted(os.listdir(root_fd)))))
        while stack:
            dir_fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(dir_fd)
                stack.pop()
                continue
            path = prefix + name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    child = open_subdir(dir_fd, name)
                    try:
                        children = sorted(os.listdir(child))
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append((child, path + "/", iter(children)))
                    yield _header(path, tarfile.DIRTYPE, st)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=dir_fd)
                    yield _header(path, tarfile.SYMTYPE, st, linkname=target)
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC, dir_fd=dir_fd)
                    try:
                        st = os.fstat(fd)
                        if not stat.S_ISREG(st.st_mode):
                            continue  # swapped for something else meanwhile
                        yield _header(path, tarfile.REGTYPE, st, st.st_size)
                        yield from _file_data(fd, st.st_size)
                    finally:
                        os.close(fd)
            except FileNotFoundError:
                continue  # removed while the tree was walked
        yield bytes(2 * BLOCK)
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)


# -- reading -------------------------------------------------------------------------------


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
    """Writes a tar stream into a directory as its bytes are fed (see the module docstring).

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
        self._move_into_place()
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
            self._state, self._need = "extra", _padded(info.size)
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
            self._skip = _padded(size) - size
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
        self._skip = _padded(size)
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

    # -- into place

    def _move_into_place(self) -> None:
        assert self.stage_fd is not None
        _check_merge(self.stage_fd, self.root_fd, "")
        _merge(self.stage_fd, self.root_fd)


def _link_problem(parts: list[str], linkname: str) -> str:
    """Why a symlink at `parts` to `linkname` is refused ("" when it stays in the root)."""
    if not linkname or linkname.startswith("/"):
        return "symlink to an absolute path"
    target = posixpath.normpath(posixpath.join(*parts[:-1], linkname))
    if target == ".." or target.startswith("../"):
        return "symlink pointing outside"
    return ""


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _is_dir(fd: int, name: str) -> bool | None:
    """lstat's answer: a directory, something else, or None (missing)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def _check_merge(src_fd: int, dst_fd: int, prefix: str) -> None:
    """Refuse before anything moves: a directory over a non-directory or the reverse."""
    for name in os.listdir(src_fd):
        src_dir, dst_dir = _is_dir(src_fd, name), _is_dir(dst_fd, name)
        if dst_dir is None:
            continue
        if src_dir != dst_dir:
            kind = "a directory" if dst_dir else "not a directory"
            raise ArchiveError(f"entry {prefix + name!r}: exists and is {kind}")
        if src_dir:
            with _opened(src_fd, name) as sub_src, _opened(dst_fd, name) as sub_dst:
                _check_merge(sub_src, sub_dst, prefix + name + "/")


def _merge(src_fd: int, dst_fd: int) -> None:
    """Move every staged entry into place: new ones whole, files and links over old ones,
    directories merged."""
    for name in os.listdir(src_fd):
        if _is_dir(src_fd, name) and _is_dir(dst_fd, name):
            with _opened(src_fd, name) as sub_src, _opened(dst_fd, name) as sub_dst:
                _merge(sub_src, sub_dst)
        else:
            os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


@contextlib.contextmanager
def _opened(dir_fd: int, name: str) -> Iterator[int]:
    try:
        fd = open_subdir(dir_fd, name)
    except OSError:
        raise ArchiveError(f"{name!r}: changed while the archive was put in place") from None
    try:
        yield fd
    finally:
        os.close(fd)
