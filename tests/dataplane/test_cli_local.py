"""`agentic-sandbox` at a terminal, on the local gVisor backend (real runsc), as a person runs it:
each call is its own process. `run` end to end (exit status, streamed output, Ctrl-C and
SIGTERM deleting the sandbox), and named sandboxes (create, exec, cp, ls, rm, delete, a
holder killed under them), with nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.support import script
from tests.dataplane.conftest import containers

CLI = script("agentic-sandbox")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, runsc_ok: None) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli-state")
    yield path
    named = path / "named"
    for record in named.glob("*/holder.json") if named.is_dir() else []:
        cli(path, "delete", record.parent.name)  # a failed test's sandbox, if any
    assert leftovers(path) == []


def environment(state: Path) -> dict[str, str]:
    env = {**os.environ, "AGENTIC_SANDBOX_STATE_DIR": str(state),
           "AGENTIC_SANDBOX_BACKEND": "local"}
    env.pop("KUBECONFIG", None)
    return env


def cli(state: Path, *argv: str, input: bytes | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *argv], env=environment(state), input=input,
                          capture_output=True, timeout=timeout, check=False,
                          **({} if input is not None else {"text": True}))


def start(state: Path, *argv: str) -> subprocess.Popen[str]:
    # As a terminal starts it: SIGINT at its default. A test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored.
    return subprocess.Popen([CLI, *argv], env=environment(state), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def leftovers(state: Path) -> list[str]:
    """runsc containers, workspaces and named sandboxes still under the state folder."""
    found = containers(state) if (state / "runsc").is_dir() else []
    for sub in ("workspaces", "named"):
        folder = state / sub
        if folder.is_dir():
            found += [f"{sub}/{p.name}" for p in folder.iterdir()
                      if p.name != ".lock" and not p.name.endswith(".log")]
    return found


def holder_pid(state: Path, name: str) -> int:
    return int(json.loads((state / "named" / name / "holder.json").read_text())["pid"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- run -------------------------------------------------------------------------------------------


def test_run_passes_output_and_the_exit_status_through(state):
    done = cli(state, "run", "--", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    argv = cli(state, "run", "-e", "WHO=you", "--", "printf", "%s|", "a b", "$WHO", "*")
    assert (argv.returncode, argv.stdout) == (0, "a b|$WHO|*|")  # argv: nothing expanded
    line = cli(state, "run", "-e", "WHO=you", "--", "echo $WHO")
    assert line.stdout == "you\n"  # one word: a shell command line
    assert leftovers(state) == []


def test_run_timeout_exits_124(state):
    done = cli(state, "run", "--timeout", "1", "--", "sleep 60")
    assert done.returncode == 124 and "timeout" in done.stderr
    assert leftovers(state) == []


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_streams_as_output_comes_and_an_interrupt_deletes_the_sandbox(state, sig, status):
    process = start(state, "run", "--", "echo first; sleep 600")
    assert process.stdout is not None
    assert process.stdout.readline() == "first\n"
    assert process.poll() is None  # still running: the line came while the command ran
    process.send_signal(sig)
    assert process.wait(120) == status
    assert leftovers(state) == []


def test_a_reader_that_goes_away_ends_run_quietly_with_141(state):
    process = start(state, "run", "--", "while :; do echo line; done")
    assert process.stdout is not None and process.stdout.readline() == "line\n"
    process.stdout.close()  # as `| head -1` does
    assert process.wait(120) == 141
    assert process.stderr is not None and process.stderr.read() == ""
    assert leftovers(state) == []


def test_a_sandbox_error_is_status_1_with_one_line(state):
    done = cli(state, "run", "-t", "no-such-template", "--", "true")
    assert done.returncode == 1
    assert done.stderr.startswith("agentic-sandbox: error: ") and \
        done.stderr.count("\n") == 1 and "no-such-template" in done.stderr
    assert leftovers(state) == []


# -- named sandboxes -------------------------------------------------------------------------------


def test_named_sandbox_create_exec_cp_ls_rm_delete(state, tmp_path):
    made = cli(state, "create", "box")
    assert (made.returncode, made.stdout) == (0, "box\n"), made.stderr
    holder = holder_pid(state, "box")
    assert len(containers(state)) == 1

    assert cli(state, "exec", "box", "--", "mkdir -p dir/sub; echo kept > dir/f; exit 5") \
        .returncode == 5
    assert cli(state, "exec", "box", "--", "cat", "dir/f").stdout == "kept\n"  # it persisted

    payload = os.urandom(3 * 2**20 + 7)
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    up = cli(state, "cp", "--progress", str(source), "box:dir/")
    assert up.returncode == 0, up.stderr
    assert "blob.bin -> box:dir/blob.bin: 3.0 MiB in" in up.stderr and "/s)" in up.stderr
    down = tmp_path / "back.bin"
    assert cli(state, "cp", "box:dir/blob.bin", str(down)).returncode == 0
    assert down.read_bytes() == payload
    assert cli(state, "cp", "-", "box:from-stdin.txt", input=b"piped\n").returncode == 0
    assert cli(state, "cp", "box:from-stdin.txt", "-", input=b"").stdout == b"piped\n"

    rows = [line.split() for line in cli(state, "ls", "-l", "box:dir").stdout.splitlines()]
    assert [(row[0], row[2]) for row in rows] == [("file", "blob.bin"), ("file", "f"),
                                                   ("directory", "sub/")]
    assert (rows[0][1], rows[1][1]) == (str(len(payload)), "5")
    assert cli(state, "ls", "box").stdout.split() == ["dir/", "from-stdin.txt"]

    refused = cli(state, "rm", "box:dir")
    assert refused.returncode == 1 and "is a directory" in refused.stderr
    outside = cli(state, "rm", "-rf", "box:../etc")
    assert outside.returncode == 1 and "outside the workspace (403)" in outside.stderr
    missing = cli(state, "rm", "box:nope")
    assert missing.returncode == 1 and "'nope' does not exist (404)" in missing.stderr
    assert cli(state, "rm", "-f", "box:nope").returncode == 0
    assert cli(state, "rm", "-r", "box:dir", "box:from-stdin.txt").returncode == 0
    assert cli(state, "ls", "box").stdout == ""

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.bin").write_bytes(payload)
    (tree / "top").write_text("t")
    up_tree = cli(state, "cp", "-r", "--progress", str(tree), "box:")
    assert up_tree.returncode == 0 and "tree -> box:tree: 3.0 MiB in" in up_tree.stderr
    assert cli(state, "mkdir", "-p", "box:tree/made/deep").returncode == 0
    back = tmp_path / "back"
    assert cli(state, "cp", "-r", "box:tree", str(back)).returncode == 0
    assert (back / "a" / "x.bin").read_bytes() == payload and (back / "made" / "deep").is_dir()
    assert cli(state, "rm", "-r", "box:tree").returncode == 0
    assert cli(state, "ls", "box").stdout == ""

    gone = cli(state, "delete", "box")
    assert gone.returncode == 0, gone.stderr
    assert not alive(holder)
    assert leftovers(state) == []
    after = cli(state, "exec", "box", "--", "true")
    assert after.returncode == 1 and "no local sandbox named 'box'" in after.stderr
    again = cli(state, "delete", "box")
    assert again.returncode == 1 and "no local sandbox named 'box'" in again.stderr


def test_rm_removes_symlinks_never_what_they_point_to(state):
    assert cli(state, "create", "links").returncode == 0
    try:
        setup = cli(state, "exec", "links", "--",
                    "mkdir keep && echo x > keep/f && ln -s keep lnk && ln -s /etc etc-link")
        assert setup.returncode == 0, setup.stderr
        assert cli(state, "rm", "-r", "links:lnk/").returncode == 0  # the trailing / too
        through = cli(state, "rm", "-f", "links:etc-link/passwd")
        assert through.returncode == 1 and "outside the workspace (403)" in through.stderr
        assert cli(state, "rm", "links:etc-link").returncode == 0
        check = cli(state, "exec", "links", "--",
                    "test -f keep/f && test ! -e lnk && test ! -L etc-link && test -f /etc/passwd")
        assert check.returncode == 0
    finally:
        assert cli(state, "delete", "links").returncode == 0
    assert leftovers(state) == []


def test_exec_interrupted_kills_its_command_in_the_named_sandbox(state):
    assert cli(state, "create", "busy").returncode == 0
    try:
        # It prints first: the runtime sends its answer's head with the first output, and
        # only then can the holder watch the caller for a hang-up.
        process = start(state, "exec", "busy", "--timeout", "600", "--",
                        "echo started; sleep 600")
        assert process.stdout is not None and process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 130
        count = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | " \
                "grep -c '^sleep 600 $'"
        # Well within the command's own 600 s: only the hang-up can have ended it.
        deadline = time.monotonic() + 30
        while (found := cli(state, "exec", "busy", "--", count).stdout.strip()) != "0" and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert found == "0"  # the holder passed the hang-up on; the runtime killed the tree
    finally:
        assert cli(state, "delete", "busy").returncode == 0
    assert leftovers(state) == []


def test_create_refuses_a_taken_name_and_keeps_the_first(state):
    assert cli(state, "create", "taken").returncode == 0
    try:
        holder = holder_pid(state, "taken")
        second = cli(state, "create", "taken")
        assert second.returncode == 1 and "already exists" in second.stderr
        assert holder_pid(state, "taken") == holder
        assert cli(state, "exec", "taken", "--", "true").returncode == 0
        assert len(containers(state)) == 1
    finally:
        assert cli(state, "delete", "taken").returncode == 0
    assert leftovers(state) == []


def test_a_killed_holder_is_reported_and_delete_cleans_up(state):
    assert cli(state, "create", "doomed").returncode == 0
    holder = holder_pid(state, "doomed")
    os.kill(holder, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(holder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(containers(state)) == 1  # runsc outlives its holder...
    orphan = cli(state, "exec", "doomed", "--", "true")
    assert orphan.returncode == 1 and "is gone" in orphan.stderr
    assert cli(state, "delete", "doomed").returncode == 0
    assert leftovers(state) == []  # ...until delete has the local backend clean up
