"""Files through the local backend: round trips, listings, and the runtime's confinement,
with the runtime running inside gVisor (the runtime-under-runsc checks)."""

from __future__ import annotations

import os

import pytest

from agentic_sandbox import FileEntry, SandboxRequestError


def test_write_read_round_trip_binary_and_text(sandbox):
    blob = bytes(range(256)) * 1000
    sandbox.write("data/blob.bin", blob)
    sandbox.write("data/note.txt", "héllo\n")
    assert sandbox.read("data/blob.bin") == blob
    assert sandbox.read("data/note.txt") == "héllo\n".encode()
    assert sandbox.run("sha256sum data/blob.bin").stdout.split()[0] == \
        __import__("hashlib").sha256(blob).hexdigest()


def test_list_and_exists(sandbox):
    sandbox.run("mkdir -p tree/sub && printf abc > tree/a.txt && ln -sf a.txt tree/link")
    entries = sandbox.list("tree")
    assert FileEntry("a.txt", "file", 3) in entries
    assert [e.name for e in entries] == ["a.txt", "link", "sub"]
    assert {e.name: e.type for e in entries}["sub"] == "directory"
    assert {e.name: e.type for e in entries}["link"] == "symlink"
    assert sandbox.exists("tree/a.txt") and not sandbox.exists("tree/missing")
    assert "tree" in [e.name for e in sandbox.list()]


def test_files_written_by_commands_are_readable_and_absolute_paths_work(sandbox):
    sandbox.run("echo made-inside > /workspace/inside.txt")
    assert sandbox.read("inside.txt") == b"made-inside\n"
    assert sandbox.read("/workspace/inside.txt") == b"made-inside\n"


def test_workspace_is_a_private_host_folder(sandbox):
    sandbox.write("visible.txt", "x")
    workspace = sandbox.backend.sandbox.workspace
    assert (workspace / "visible.txt").read_text() == "x"
    assert os.stat(workspace).st_mode & 0o777 == 0o700


def test_missing_file_is_404(sandbox):
    with pytest.raises(SandboxRequestError) as info:
        sandbox.read("no/such/file")
    assert info.value.status_code == 404


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../x"])
def test_paths_outside_the_workspace_are_403(sandbox, path):
    with pytest.raises(SandboxRequestError) as info:
        sandbox.read(path)
    assert info.value.status_code == 403
    with pytest.raises(SandboxRequestError) as info:
        sandbox.write(path, "nope")
    assert info.value.status_code == 403


def test_symlink_escape_is_403(sandbox):
    sandbox.run("ln -sf /etc/hostname escape")
    with pytest.raises(SandboxRequestError) as info:
        sandbox.read("escape")
    assert info.value.status_code == 403


def test_oversized_timeout_is_a_400(sandbox):
    with pytest.raises(SandboxRequestError) as info:
        sandbox.run("true", timeout=100000)
    assert info.value.status_code == 400


def test_large_answers_cross_the_channel_whole(sandbox):
    # Far beyond a socket buffer: the channel must block, never cut an answer short.
    result = sandbox.run("head -c 3000000 /dev/zero | tr '\\0' a")
    assert result.stdout_truncated and len(result.stdout) == 1024 * 1024
    assert set(result.stdout) == {"a"}
    blob = os.urandom(20 * 1024 * 1024)
    sandbox.write("big.bin", blob)
    assert sandbox.read("big.bin") == blob
    with sandbox.stream("head -c 3000000 /dev/zero | tr '\\0' b") as stream:
        total = sum(len(c.data) for c in stream)
    assert total == 1024 * 1024 and stream.exit_code == 0
