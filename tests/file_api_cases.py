"""The file API's tests, written once and run against each backend's real runtime.

Imported by tests/http/test_client_file_api.py (SandboxClient over TCP to `sandbox-runtime`
under gunicorn) and tests/dataplane/test_client_local_file_api.py (the local backend: the
runtime inside gVisor over its socketpair). Each importing module provides the fixtures:

- `box`: an open SandboxClient whose runtime allows uploads of LIMIT bytes and directory
  uploads of ENTRIES entries;
- `surface`: "runtime" or "local", where hostile inputs are recorded (tests/security_report);
- `outside`: an absolute directory outside the workspace, as commands in the sandbox see it,
  holding `keep` (contents "keep"): what an escape would touch.

Each test works in a directory of its own (`scratch`), so one sandbox serves a module.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from agentic_sandbox import ArchiveSummary, SandboxClient, SandboxRequestError
from agentic_sandbox._protocol_files import archive_in_call

LIMIT = 1024 * 1024
ENTRIES = 50
MIB = 1024 * 1024


@pytest.fixture
def scratch(box: SandboxClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    box.mkdir(name)
    return name


def status_of(action) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(SandboxRequestError) as info:
        action()
    return info.value.status_code


def shell(box: SandboxClient, script: str) -> str:
    result = box.run(script)
    assert result.ok, result
    return result.stdout


def names(box: SandboxClient, path: str) -> str:
    """The names in a directory, one a line, sorted (`ls` fails under some gVisor releases:
    statx answers EINVAL to coreutils 9)."""
    return shell(box, f"find {path} -mindepth 1 -maxdepth 1 -printf '%f\\n' | sort")


def outside_intact(box: SandboxClient, outside: str) -> bool:
    return shell(box, f"cat {outside}/keep") == "keep\n" and names(box, outside) == "keep\n"


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A tar archive of exactly these members (tarfile's own writer: any header it can
    express, hostile ones included)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def send_tar(box: SandboxClient, remote_dir: str, data: bytes) -> ArchiveSummary:
    """POST /archive/remote_dir with these exact bytes, through the client's own path."""
    return box._call(archive_in_call(remote_dir, [data], 60))


# -- stat, mkdir ---------------------------------------------------------------------------


def test_stat_reports_type_size_mode_and_mtime(box, scratch):
    shell(box, f"printf 12345 > {scratch}/f && chmod 640 {scratch}/f && "
               f"touch -d @1700000000 {scratch}/f && mkdir {scratch}/d")
    info = box.stat(f"{scratch}/f")
    assert (info.path, info.type, info.size, info.mode) == (f"{scratch}/f", "file", 5, 0o640)
    assert info.mtime == 1700000000
    assert box.stat(f"{scratch}/d").type == "directory"
    assert box.stat(".").type == "directory"
    assert status_of(lambda: box.stat(f"{scratch}/missing")) == 404


def test_stat_and_mkdir_refuse_escapes(box, scratch, outside, hostile, surface):
    with hostile(surface, "stat and mkdir of ../ and of symlinks leading out"):
        shell(box, f"ln -s {outside} {scratch}/out")
        assert status_of(lambda: box.stat("../../etc/passwd")) == 403
        assert status_of(lambda: box.stat(f"{scratch}/out/keep")) == 403
        assert status_of(lambda: box.mkdir(f"{scratch}/out/made")) == 403
        assert status_of(lambda: box.mkdir("../made")) == 403
        assert names(box, outside) == "keep\n"


def test_mkdir_parents_and_errors(box, scratch):
    box.mkdir(f"{scratch}/a/b/c")
    box.mkdir(f"{scratch}/a/b/c")  # parents=True: no error if it exists
    assert box.stat(f"{scratch}/a/b/c").type == "directory"
    assert status_of(lambda: box.mkdir(f"{scratch}/a/b/c", parents=False)) == 400
    assert status_of(lambda: box.mkdir(f"{scratch}/x/y", parents=False)) == 404
    box.write(f"{scratch}/file", "x")
    assert status_of(lambda: box.mkdir(f"{scratch}/file/sub")) == 400


# -- remove --------------------------------------------------------------------------------


def test_remove_file_link_and_tree(box, scratch):
    shell(box, f"mkdir -p {scratch}/t/s && echo x > {scratch}/t/s/f && echo y > {scratch}/f "
               f"&& ln -s f {scratch}/l")
    box.remove(f"{scratch}/l")
    assert box.read(f"{scratch}/f") == b"y\n"  # the link went, not its target
    box.remove(f"{scratch}/f")
    assert status_of(lambda: box.remove(f"{scratch}/t")) == 400  # not empty, not recursive
    box.remove(f"{scratch}/t", recursive=True)
    assert box.list(scratch) == []
    assert status_of(lambda: box.remove(f"{scratch}/t")) == 404
    assert status_of(lambda: box.remove(".")) == 400
    with pytest.raises(ValueError):
        box.remove("")


def test_removing_a_tree_never_follows_its_symlinks(box, scratch, outside, hostile, surface):
    with hostile(surface, "rm -r of a tree holding symlinks to a directory outside"):
        shell(box, f"mkdir -p {scratch}/t/s && ln -s {outside} {scratch}/t/abs && "
                   f"ln -s {outside} {scratch}/t/s/abs2 && ln -s {outside}/keep {scratch}/t/k")
        box.remove(f"{scratch}/t", recursive=True)
        assert not box.exists(f"{scratch}/t")
        assert outside_intact(box, outside)
        # A symlink leading out, named directly: the link goes, never what it points to.
        shell(box, f"ln -s {outside} {scratch}/direct")
        box.remove(f"{scratch}/direct", recursive=True)
        assert outside_intact(box, outside)
        assert status_of(lambda: box.remove("../x", recursive=True)) == 403
        shell(box, f"ln -s {outside} {scratch}/via")
        assert status_of(lambda: box.remove(f"{scratch}/via/keep")) == 403
        assert outside_intact(box, outside)


# -- move, copy ----------------------------------------------------------------------------


def test_move_files_directories_and_links(box, scratch):
    shell(box, f"mkdir -p {scratch}/d && echo a > {scratch}/d/a && echo b > {scratch}/b && "
               f"ln -s b {scratch}/l")
    box.move(f"{scratch}/d", f"{scratch}/e")
    assert box.read(f"{scratch}/e/a") == b"a\n" and not box.exists(f"{scratch}/d")
    box.move(f"{scratch}/b", f"{scratch}/e/a")  # replaces a file
    assert box.read(f"{scratch}/e/a") == b"b\n"
    box.move(f"{scratch}/l", f"{scratch}/l2")
    assert {e.name: e.type for e in box.list(scratch)}["l2"] == "symlink"
    assert status_of(lambda: box.move(f"{scratch}/missing", f"{scratch}/x")) == 404
    assert status_of(lambda: box.move(f"{scratch}/e", f"{scratch}/e/inside")) == 400


def test_move_and_copy_refuse_escapes(box, scratch, outside, hostile, surface):
    with hostile(surface, "move and copy to and from ../ and through symlinks leading out"):
        shell(box, f"echo x > {scratch}/f && ln -s {outside} {scratch}/out")
        assert status_of(lambda: box.move(f"{scratch}/f", "../f")) == 403
        assert status_of(lambda: box.move(f"{scratch}/f", f"{scratch}/out/f")) == 403
        assert status_of(lambda: box.move(f"{scratch}/out/keep", f"{scratch}/k")) == 403
        assert status_of(lambda: box.copy(f"{scratch}/f", f"{scratch}/out/f")) == 403
        assert status_of(lambda: box.copy(f"{scratch}/out/keep", f"{scratch}/k")) == 403
        assert status_of(lambda: box.copy(f"{scratch}/out", f"{scratch}/k")) == 403
        assert status_of(lambda: box.copy("/etc/passwd", f"{scratch}/k")) == 403
        assert outside_intact(box, outside) and box.read(f"{scratch}/f") == b"x\n"


def test_copy_file_and_tree(box, scratch):
    shell(box, f"mkdir -p {scratch}/t/s/empty && printf 1234 > {scratch}/t/s/f && "
               f"chmod 750 {scratch}/t/s/f && ln -s s/f {scratch}/t/rel && echo o > {scratch}/o")
    summary = box.copy(f"{scratch}/t", f"{scratch}/u")
    assert summary == ArchiveSummary(files=1, directories=3, symlinks=1, bytes=4)
    assert box.read(f"{scratch}/u/s/f") == b"1234"
    assert box.stat(f"{scratch}/u/s/f").mode == 0o750
    assert shell(box, f"readlink {scratch}/u/rel") == "s/f\n"
    assert box.copy(f"{scratch}/o", f"{scratch}/u/s/f").bytes == 2  # replaces a file
    assert box.read(f"{scratch}/u/s/f") == b"o\n" and box.read(f"{scratch}/t/s/f") == b"1234"
    assert status_of(lambda: box.copy(f"{scratch}/t", f"{scratch}/u")) == 400  # exists
    assert status_of(lambda: box.copy(f"{scratch}/t", f"{scratch}/t/s/in")) == 400
    assert status_of(lambda: box.copy(f"{scratch}/o", f"{scratch}/t")) == 400  # a directory
    assert status_of(lambda: box.copy(f"{scratch}/none", f"{scratch}/n")) == 404


def test_copying_a_tree_copies_its_symlinks_as_links(box, scratch, outside, hostile, surface):
    with hostile(surface, "copy of a tree holding symlinks to a directory outside"):
        shell(box, f"mkdir -p {scratch}/t && ln -s {outside} {scratch}/t/abs && "
                   f"ln -s {outside}/keep {scratch}/t/k")
        summary = box.copy(f"{scratch}/t", f"{scratch}/u")
        assert (summary.symlinks, summary.files, summary.bytes) == (2, 0, 0)
        assert shell(box, f"readlink {scratch}/u/abs {scratch}/u/k") == \
            f"{outside}\n{outside}/keep\n"
        assert outside_intact(box, outside)
        # ... and removing the copy leaves the outside alone too.
        box.remove(f"{scratch}/u", recursive=True)
        assert outside_intact(box, outside)


# -- streamed uploads ----------------------------------------------------------------------


def test_write_streams_a_file_object_and_upload_file_a_path(box, scratch, tmp_path):
    data = os.urandom(LIMIT - 1000)
    box.write(f"{scratch}/a.bin", io.BytesIO(data))
    assert box.read(f"{scratch}/a.bin") == data
    local = tmp_path / "b.bin"
    local.write_bytes(data[:5000])
    seen: list[int] = []
    box.upload_file(local, f"{scratch}/sub/b.bin", progress=seen.append)
    assert box.read(f"{scratch}/sub/b.bin") == data[:5000] and sum(seen) == 5000
    assert box.download_file(f"{scratch}/a.bin", tmp_path / "a.bin") == len(data)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]  # no leftovers


def test_a_streamed_upload_past_the_limit_is_a_413_and_leaves_nothing(box, scratch, tmp_path):
    local = tmp_path / "big.bin"
    with open(local, "wb") as file:
        file.truncate(LIMIT + 1)
    assert status_of(lambda: box.upload_file(local, f"{scratch}/big.bin")) == 413
    assert box.list(scratch) == []
    assert status_of(lambda: box.download_file(f"{scratch}/none", tmp_path / "x")) == 404
    assert not (tmp_path / "x").exists() and len(list(tmp_path.iterdir())) == 1


# -- directories as tar streams ----------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "b" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "top.txt").write_text("top\n")
    (root / "x.sh").write_text("#!/bin/sh\n")
    (root / "x.sh").chmod(0o755)
    (root / "a" / "rel").symlink_to("b/blob.bin")
    (root / "ü name").write_text("utf-8\n")


def tree_of(root: Path) -> dict[str, object]:
    """Every entry under root: a link's target, a file's bytes and mode, or 'dir'."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return found


def test_a_directory_goes_up_and_comes_back_the_same(box, scratch, tmp_path):
    make_tree(tmp_path / "src")
    sent: list[int] = []
    summary = box.upload_dir(tmp_path / "src", f"{scratch}/up", progress=sent.append)
    assert (summary.files, summary.directories, summary.symlinks) == (4, 3, 1)
    assert summary.bytes == 300_000 + 4 + 10 + 6 and sum(sent) > summary.bytes
    assert shell(box, f"cd {scratch}/up && cat top.txt && readlink a/rel && "
                      "test -x x.sh && echo exec") == "top\nb/blob.bin\nexec\n"
    got: list[int] = []
    back = box.download_dir(f"{scratch}/up", tmp_path / "back", progress=got.append)
    assert back == summary and sum(got) > summary.bytes
    assert tree_of(tmp_path / "back") == tree_of(tmp_path / "src")
    # Again over what is there: files replaced, the rest kept.
    (tmp_path / "src" / "top.txt").write_text("new\n")
    shell(box, f"echo mine > {scratch}/up/mine")
    box.upload_dir(tmp_path / "src", f"{scratch}/up")
    assert box.read(f"{scratch}/up/top.txt") == b"new\n"
    assert box.read(f"{scratch}/up/mine") == b"mine\n"
    assert status_of(lambda: box.download_dir(f"{scratch}/none", tmp_path / "n")) == 404
    assert status_of(lambda: box.download_dir(f"{scratch}/up/top.txt", tmp_path / "n")) == 400


def test_a_download_never_writes_outside_the_local_directory(box, scratch, outside, tmp_path,
                                                             hostile, surface):
    with hostile("local", f"download_dir of a {surface} tree holding symlinks leading out"):
        shell(box, f"mkdir -p {scratch}/d/s && echo ok > {scratch}/d/s/f && "
                   f"ln -s {tmp_path} {scratch}/d/abs && ln -s ../../.. {scratch}/d/s/up && "
                   f"ln -s s/f {scratch}/d/fine")
        summary = box.download_dir(f"{scratch}/d", tmp_path / "got")
        assert (summary.symlinks, summary.skipped) == (1, 2)
        got = tree_of(tmp_path / "got")
        assert sorted(got) == ["fine", "s", "s/f"] and got["fine"] == ("link", "s/f")
        assert (tmp_path / "got" / "s" / "f").read_bytes() == b"ok\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["got"]


HOSTILE_TARS = {
    "a name with ..": [(member("../escaped"), b"x")],
    "a name deep with ..": [(member("a/b/../../../escaped"), b"x")],
    "an absolute name": [(member("/tmp/escaped-abs"), b"x")],
    "a symlink to an absolute path": [(member("l", tarfile.SYMTYPE, "/etc"), None)],
    "a symlink leading out": [(member("d/l", tarfile.SYMTYPE, "../../.."), None)],
    "a file under a symlink": [(member("l", tarfile.SYMTYPE, "."), None),
                               (member("l/f"), b"x")],
    "a hard link": [(member("h", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "a character device": [(member("dev", tarfile.CHRTYPE), None)],
    "a FIFO": [(member("fifo", tarfile.FIFOTYPE), None)],
    # Deeper than MAX_TREE_DEPTH (finding 28): taken in whole before, and a second such
    # archive over the first ran the merge out of Python's recursion limit (a 500).
    "a file 300 directories deep": [(member("d/" * 300 + "f"), b"x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_directory_uploads_are_refused_and_change_nothing(box, scratch, outside,
                                                                  hostile, surface, case):
    with hostile(surface, f"a directory upload (tar) holding {case}"):
        shell(box, f"mkdir -p {scratch}/dst && echo before > {scratch}/dst/old")
        data = tar_of((member("first.txt"), b"first"), *HOSTILE_TARS[case])
        assert status_of(lambda: send_tar(box, f"{scratch}/dst", data)) == 400
        assert names(box, f"{scratch}/dst") == "old\n"  # no staging left, no first.txt
        assert box.read(f"{scratch}/dst/old") == b"before\n"
        assert names(box, scratch) == "dst\n"  # `..` led nowhere either
        assert shell(box, "test -e /tmp/escaped-abs || echo absent") == "absent\n"
        assert outside_intact(box, outside)


def test_directory_uploads_are_bounded_in_entries_and_bytes(box, scratch, hostile, surface):
    with hostile(surface, "directory uploads past the entry and byte bounds"):
        many = tar_of(*[(member(f"f{i}"), b"") for i in range(ENTRIES + 1)])
        assert status_of(lambda: send_tar(box, f"{scratch}/many", many)) == 413
        big = tar_of((member("a"), bytes(LIMIT // 2)), (member("b"), bytes(LIMIT // 2 + 1)))
        assert status_of(lambda: send_tar(box, f"{scratch}/big", big)) == 413
        assert names(box, f"{scratch}/many") == names(box, f"{scratch}/big") == ""
        # A pax header claiming a huge size is refused before it is read.
        huge = tarfile.TarInfo("h")
        huge.type, huge.size = tarfile.XHDTYPE, 100 * MIB
        assert status_of(lambda: send_tar(box, f"{scratch}/hdr",
                                          huge.tobuf(tarfile.USTAR_FORMAT))) == 413
        ok = tar_of(*[(member(f"f{i}"), b"") for i in range(ENTRIES)])
        assert send_tar(box, f"{scratch}/ok", ok).files == ENTRIES


def test_a_truncated_or_garbled_archive_is_a_400(box, scratch):
    data = tar_of((member("a"), bytes(5000)))
    assert status_of(lambda: send_tar(box, f"{scratch}/cut", data[:3000])) == 400
    assert status_of(lambda: send_tar(box, f"{scratch}/junk", b"not a tar" * 100)) == 400
    assert names(box, f"{scratch}/cut") == names(box, f"{scratch}/junk") == ""


def test_upload_dir_refuses_a_local_file(box, scratch, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        box.upload_dir(tmp_path / "f", scratch)

