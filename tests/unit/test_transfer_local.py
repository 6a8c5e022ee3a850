"""The client's side of directory downloads, on this machine: a hostile sandbox's tar stream
(agentic_sandbox._transfer.DirectoryDownload, sandbox_common.tarstream) never writes outside
the target directory, and a refused stream leaves it as it was."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from agentic_sandbox import SandboxError
from agentic_sandbox._transfer import DirectoryDownload, DirectoryUpload
from tests.file_api_cases import HOSTILE_TARS, member, tar_of


def files_under(root) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


SKIPPED_LINKS = ("a symlink leading out", "a symlink to an absolute path")


@pytest.mark.parametrize("case", sorted(set(HOSTILE_TARS) - set(SKIPPED_LINKS)))
def test_a_hostile_archive_is_refused_on_the_host(tmp_path, hostile, case):
    with hostile("local", f"download_dir of a sandbox's tar holding {case}"):
        target = tmp_path / "a" / "target"
        target.mkdir(parents=True)
        (target / "old").write_text("before")
        data = tar_of((member("first.txt"), b"first"), *HOSTILE_TARS[case])
        with pytest.raises(SandboxError, match="refused the sandbox's archive"), \
                DirectoryDownload(target, "GET /archive/x") as download:
            for at in range(0, len(data), 700):  # in pieces, as a network delivers it
                download.feed(data[at:at + 700])
            download.finish()
        assert files_under(tmp_path) == ["a", "a/target", "a/target/old"]
        assert (target / "old").read_text() == "before"


@pytest.mark.parametrize("case", SKIPPED_LINKS)
def test_symlinks_leading_out_are_left_out_on_the_host(tmp_path, hostile, case):
    with hostile("local", f"download_dir of a sandbox's tar holding {case}"):
        data = tar_of((member("first.txt"), b"first"), *HOSTILE_TARS[case])
        with DirectoryDownload(tmp_path / "t", "GET /archive/x") as download:
            download.feed(data)
            summary = download.finish()
        assert (summary.files, summary.symlinks, summary.skipped) == (1, 0, 1)
        assert files_under(tmp_path) == ["t", "t/first.txt"]


def test_a_truncated_archive_changes_nothing(tmp_path):
    data = tar_of((member("f"), bytes(5000)))
    with pytest.raises(SandboxError, match="ended early"), \
            DirectoryDownload(tmp_path / "t", "GET /archive/x") as download:
        download.feed(data[:2000])
        download.finish()
    assert files_under(tmp_path) == ["t"]


def test_a_tree_round_trips_through_the_stream_in_any_pieces(tmp_path):
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(os.urandom(70_000))
    (src / "d" / "l").symlink_to("e/f")
    (src / ("long-" + "n" * 200)).write_text("a long name (a pax header)")
    stream = b"".join(DirectoryUpload(src))
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:  # any tar reader takes it
        assert sorted(tar.getnames()) == ["d", "d/e", "d/e/f", "d/l", "long-" + "n" * 200]
    with DirectoryDownload(tmp_path / "dst", "GET /archive/x") as download:
        for at in range(0, len(stream), 333):
            download.feed(stream[at:at + 333])
        summary = download.finish()
    assert (summary.files, summary.directories, summary.symlinks) == (2, 2, 1)
    assert (tmp_path / "dst" / "d" / "e" / "f").read_bytes() == \
        (src / "d" / "e" / "f").read_bytes()
    assert os.readlink(tmp_path / "dst" / "d" / "l") == "e/f"
