"""Commands through the local backend in a real gVisor sandbox: output, exit codes, timeouts,
streaming, and a channel that breaks and comes back."""

from __future__ import annotations

import time

from agentic_sandbox import OutputChunk


def test_run_returns_stdout_stderr_and_exit_code(sandbox):
    result = sandbox.run("echo out; echo err >&2; exit 7")
    assert result.stdout == "out\n" and result.stderr == "err\n" and result.exit_code == 7


def test_runs_in_gvisor_not_on_the_host(sandbox):
    # gVisor's kernel reports itself in dmesg; the host's would not say "gVisor".
    result = sandbox.run("dmesg 2>/dev/null | head -3; cat /proc/version")
    assert "gVisor" in result.stdout or "Starting gVisor" in result.stdout, result


def test_env_cwd_and_workspace(sandbox):
    sandbox.run("mkdir -p sub")
    result = sandbox.run('pwd; echo "$GREETING"; echo "$HOME"', env={"GREETING": "hi"},
                         cwd="sub")
    assert result.stdout.splitlines() == ["/workspace/sub", "hi", "/workspace"]


def test_timeout_kills_the_command_tree(sandbox):
    start = time.monotonic()
    result = sandbox.run("sleep 60 & sleep 60; echo never", timeout=1)
    assert result.timed_out and "never" not in result.stdout
    assert time.monotonic() - start < 30  # a sanity bound, not a speed claim
    # Nothing of it is left, not even a zombie: the sandbox's init reaps orphans.
    check = "ps -eo stat,args | grep -E '^Z|sleep 60' | grep -v grep || true"
    for _ in range(50):
        left = sandbox.run(check).stdout
        if not left:
            break
        time.sleep(0.1)
    assert left == ""


def test_stream_delivers_chunks_in_order_then_exit_code(sandbox):
    with sandbox.stream("for i in 1 2 3; do echo line$i; sleep 0.2; done; echo bad >&2; "
                        "exit 4", timeout=30) as stream:
        chunks = list(stream)
    assert "".join(c.data for c in chunks if c.stream == "stdout") == "line1\nline2\nline3\n"
    assert OutputChunk("stderr", "bad\n") in chunks
    assert stream.exit_code == 4


def test_stream_arrives_before_the_command_ends(sandbox):
    with sandbox.stream("echo first; sleep 8; echo second", timeout=30) as stream:
        iterator = iter(stream)
        start = time.monotonic()
        first = next(iterator)
        waited = time.monotonic() - start
        rest = list(iterator)
    assert first.data == "first\n"
    assert waited < 6  # it came well before the 8 s sleep ended (a generous bound)
    assert [c.data for c in rest] == ["second\n"]


def test_abandoned_stream_breaks_only_the_channel(sandbox):
    sandbox.write("keep.txt", "still here")
    stream = sandbox.stream("echo go; sleep 60", timeout=120)
    assert next(iter(stream)).data == "go\n"
    stream.close()  # hang up mid-command
    # The next call gets a fresh runtime in the same sandbox: workspace intact.
    assert sandbox.run("cat keep.txt").stdout == "still here"


def test_abandoned_stream_kills_its_command(sandbox):
    stream = sandbox.stream("echo go; exec sleep 61", timeout=120)
    assert next(iter(stream)).data == "go\n"
    stream.close()
    check = "ps -eo args | grep -c '^sleep 61' || true"
    for _ in range(50):
        if sandbox.run(check).stdout.strip() == "0":
            break
        time.sleep(0.1)
    assert sandbox.run(check).stdout.strip() == "0"


def test_concurrent_calls_use_a_second_channel(sandbox):
    import threading
    results = {}

    def slow() -> None:
        results["slow"] = sandbox.run("sleep 2; echo slow", timeout=30).stdout

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    assert sandbox.run("echo fast").stdout == "fast\n"
    thread.join(60)
    assert results["slow"] == "slow\n"
