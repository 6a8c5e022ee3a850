"""`sandbox-runtime --stdio`: raw HTTP/1.1 over a subprocess's stdin/stdout, several per stream.

This is how the local gVisor backend talks to the runtime inside `runsc --network=none`;
here the same process runs on the host so the framing itself is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO

import pytest

from testbed.support import script


def read_response(stream: IO[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Parse one HTTP/1.1 response (Content-Length or chunked) from a byte stream."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked"
        body = b""
        while True:
            size = int(stream.readline().strip(), 16)
            if size == 0:
                assert stream.readline() == b"\r\n"
                break
            body += stream.read(size)
            assert stream.readline() == b"\r\n"
    return status, headers, body


def request(method: str, path: str, body: bytes = b"", content_type: str = "application/json",
            extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: sandbox\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


@pytest.fixture
def stdio_runtime(tmp_path):
    process = subprocess.Popen([script("sandbox-runtime"), "--stdio", "--base-dir", str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        yield process, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_two_requests_on_one_stream_then_eof_exits_zero(stdio_runtime):
    process, _ = stdio_runtime
    process.stdin.write(request("GET", "/"))
    process.stdin.write(request("POST", "/execute", json.dumps({"command": "echo hi"}).encode()))
    process.stdin.flush()
    status, headers, body = read_response(process.stdout)
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert headers["connection"] == "keep-alive"
    status, _, body = read_response(process.stdout)
    assert status == 200
    assert json.loads(body)["stdout"] == "hi\n"
    process.stdin.close()
    assert process.wait(timeout=10) == 0
    assert process.stdout.read() == b""  # nothing but responses on stdout


def test_streaming_execute_is_chunked_and_upload_download_work(stdio_runtime):
    process, workspace = stdio_runtime
    stream_body = json.dumps({"command": "echo a; echo b >&2; print_me=1; echo stray"}).encode()
    process.stdin.write(request("POST", "/execute/stream", stream_body))
    boundary = "xyz"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"dir/f.txt\"\r\n\r\npayload\r\n--{boundary}--\r\n").encode()
    process.stdin.write(request("POST", "/upload", form,
                                f"multipart/form-data; boundary={boundary}"))
    process.stdin.write(request("GET", "/download/dir/f.txt"))
    process.stdin.write(request("GET", "/exists/../x", extra="Connection: close\r\n"))
    process.stdin.flush()
    status, headers, body = read_response(process.stdout)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[-1]["exit_code"] == 0
    assert "".join(x["data"] for x in lines[:-1] if x["stream"] == "stdout") == "a\nstray\n"
    status, _, body = read_response(process.stdout)
    assert (status, json.loads(body)) == (200, {"path": "dir/f.txt", "size": 7})
    assert (workspace / "dir" / "f.txt").read_bytes() == b"payload"
    assert read_response(process.stdout)[::2] == (200, b"payload")
    status, headers, body = read_response(process.stdout)
    assert status == 403 and headers["connection"] == "close"
    assert process.wait(timeout=10) == 0  # Connection: close ends the server


def test_chunked_request_body_and_unread_body_keep_the_stream_in_sync(stdio_runtime):
    process, _ = stdio_runtime
    payload = json.dumps({"command": "echo chunked"}).encode()
    process.stdin.write(b"POST /execute HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Type: application/json\r\n\r\n"
                        + b"%x\r\n%s\r\n" % (5, payload[:5])
                        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload) - 5, payload[5:]))
    # A body the app never reads (unknown route) must be skipped, not parsed as a request.
    process.stdin.write(request("POST", "/nowhere", b"GET / HTTP/1.1\r\n\r\n"))
    process.stdin.write(request("GET", "/healthz"))
    process.stdin.flush()
    status, _, body = read_response(process.stdout)
    assert (status, json.loads(body)["stdout"]) == (200, "chunked\n")
    assert read_response(process.stdout)[0] == 404
    assert read_response(process.stdout)[::2] == (200, b'{"status": "ok"}')
    process.stdin.close()
    assert process.wait(timeout=10) == 0


def test_malformed_request_gets_400_and_exit_1(stdio_runtime):
    process, _ = stdio_runtime
    process.stdin.write(b"this is not http\r\n\r\n")
    process.stdin.flush()
    status, headers, body = read_response(process.stdout)
    assert status == 400 and headers["connection"] == "close"
    assert "error" in json.loads(body)
    assert process.wait(timeout=10) == 1


def test_a_hang_up_on_a_socket_stdin_kills_a_silent_command(tmp_path):
    """The local backend's channel is a socketpair: closing it while a command prints
    nothing must end the command at once, not at its deadline."""
    import os
    import socket
    import time

    ours, theirs = socket.socketpair()
    process = subprocess.Popen([script("sandbox-runtime"), "--stdio", "--base-dir",
                                str(tmp_path)], stdin=theirs.fileno(), stdout=theirs.fileno(),
                               stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        body = json.dumps({"command": "echo $$ > pid; echo go; exec sleep 61",
                           "timeout": 120}).encode()
        ours.sendall(request("POST", "/execute/stream", body))
        reader = ours.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        while b"go" not in reader.readline():
            pass
        pid = int((tmp_path / "pid").read_text())

        def sleeping() -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        assert sleeping()
        reader.close()
        ours.close()
        deadline = time.monotonic() + 20
        while sleeping() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sleeping(), "the command outlived its client"
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if "pid" in locals() and sleeping():
            os.kill(pid, 9)


def test_every_route_shares_one_runtime_over_stdio(stdio_runtime):
    """--stdio serves the one route table: commands, files, unknown routes and /metrics
    share one set of errors and counts."""
    process, workspace = stdio_runtime
    (workspace / "é.txt").write_text("x")
    process.stdin.write(request("POST", "/execute", b'{"command": "exit 3"}'))
    process.stdin.write(request("POST", "/execute", b'{"command": 5}'))
    process.stdin.write(request("GET", "/exists/%C3%A9.txt"))
    process.stdin.write(request("GET", "/exists/../etc/passwd"))
    process.stdin.write(request("GET", "/list/"))
    process.stdin.write(request("GET", "/no-such-route"))
    process.stdin.write(request("GET", "/metrics"))
    process.stdin.close()
    answers = [read_response(process.stdout) for _ in range(7)]
    assert process.wait(timeout=30) == 0
    assert (answers[0][0], json.loads(answers[0][2])["exit_code"]) == (200, 3)
    assert answers[1][0] == 400 and "command" in json.loads(answers[1][2])["error"]
    assert json.loads(answers[2][2]) == {"path": "é.txt", "exists": True}
    assert answers[3][0] == 403 and set(json.loads(answers[3][2])) == {"error"}
    assert [e["name"] for e in json.loads(answers[4][2])] == ["é.txt"]
    assert answers[5][0] == 404 and set(json.loads(answers[5][2])) == {"error"}
    metrics = answers[6][2].decode()
    assert 'sandbox_runtime_commands_total{outcome="exit"} 1.0' in metrics
    assert 'sandbox_runtime_http_errors_total{status="400"} 1.0' in metrics
    assert 'sandbox_runtime_http_errors_total{status="403"} 1.0' in metrics
    assert 'sandbox_runtime_http_errors_total{status="404"} 1.0' in metrics
    assert "sandbox_runtime_command_duration_seconds_count 1.0" in metrics


DOWNLOAD_SIZE = 4 * 1024 * 1024


def download_then_healthz(stdio_runtime, name: str):
    """Ask for a 4 MiB file, then /healthz, on one stream; return once the download's
    status line is read. The answer goes through a 64 KiB pipe nobody reads yet, so the
    server is still in the middle of the file: the caller changes it now."""
    process, workspace = stdio_runtime
    path = workspace / name
    path.write_bytes(b"a" * DOWNLOAD_SIZE)
    process.stdin.write(request("GET", f"/download/{name}"))
    process.stdin.write(request("GET", "/healthz"))
    process.stdin.flush()
    status_line = process.stdout.readline()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    return process, path


def test_a_download_of_a_growing_file_carries_exactly_its_content_length(hostile,
                                                                        stdio_runtime):
    """The file grows while it is sent: the answer stops at the size it declared, and the
    next answer on the same stream parses (extra bytes would forge its start)."""
    process, growing = download_then_healthz(stdio_runtime, "growing.bin")
    size = DOWNLOAD_SIZE
    with growing.open("ab") as f:
        for _ in range(100):
            f.write(b"FORGED" * 100)
            f.flush()
    headers: dict[str, str] = {}
    while (line := process.stdout.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    with hostile("runtime", "--stdio: a file grows while it is downloaded"):
        assert int(headers["content-length"]) == size
        assert process.stdout.read(size) == b"a" * size
        status, _, body = read_response(process.stdout)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_a_download_of_a_file_truncated_meanwhile_ends_the_stream(stdio_runtime):
    """Fewer bytes than declared cannot be framed: the server stops (exit 1), so the reader
    sees end-of-file instead of taking the next answer's bytes for the rest."""
    process, shrinking = download_then_healthz(stdio_runtime, "shrinking.bin")
    os.truncate(shrinking, 1024)
    rest = process.stdout.read()  # to end-of-file
    assert len(rest) < DOWNLOAD_SIZE and b"HTTP/1.1" not in rest
    assert process.wait(timeout=10) == 1


def test_a_stream_s_head_comes_before_the_command_s_first_output(stdio_runtime):
    """The head of /execute/stream is flushed at once: a client's stream() returns while the
    command is still silent (here: until the test itself lets it go on), and can hang up."""
    import select

    process, workspace = stdio_runtime
    body = json.dumps({"command": "until [ -e go ]; do sleep 0.05; done; echo done",
                       "timeout": 60}).encode()
    process.stdin.write(request("POST", "/execute/stream", body))
    process.stdin.flush()
    readable, _, _ = select.select([process.stdout.fileno()], [], [], 30)
    assert readable, "no head while the command was silent"
    assert process.stdout.readline().startswith(b"HTTP/1.1 200")
    (workspace / "go").touch()
    while process.stdout.readline() not in (b"\r\n", b""):
        pass  # the rest of the head
    chunks = b""
    while True:
        size = int(process.stdout.readline().strip(), 16)
        if size == 0:
            break
        chunks += process.stdout.read(size)
        process.stdout.readline()
    lines = [json.loads(line) for line in chunks.splitlines()]
    assert lines[0] == {"stream": "stdout", "data": "done\n"}
    assert lines[-1]["exit_code"] == 0


def test_the_launcher_runs_by_path_as_the_local_backend_starts_it(tmp_path):
    """sandbox_runtime/launch.py with the local backend's own argv (python -I -S -B, by
    path, the import folders as an argument; only the workspace differs): it answers over a
    socketpair, runs commands, takes uploads (werkzeug found through those folders), and
    exits 0 when the channel ends (it is not a sandbox's first process here)."""
    import socket

    from agentic_sandbox._backends.local.launch import runtime_argv

    argv = runtime_argv()
    assert argv[1:4] == ["-I", "-S", "-B"] and argv[4].endswith("sandbox_runtime/launch.py")
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([*argv[:-1], str(tmp_path)], stdin=theirs.fileno(),
                               stdout=theirs.fileno(), stderr=subprocess.DEVNULL,
                               env={"PATH": os.environ["PATH"]})
    theirs.close()
    try:
        form = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="up.txt"'
                b"\r\n\r\nuploaded\r\n--b--\r\n")
        ours.sendall(request("GET", "/healthz")
                     + request("POST", "/upload", form, "multipart/form-data; boundary=b")
                     + request("POST", "/execute", b'{"command": "cat up.txt"}'))
        reader = ours.makefile("rb")
        assert read_response(reader)[::2] == (200, b'{"status": "ok"}')
        assert json.loads(read_response(reader)[2]) == {"path": "up.txt", "size": 8}
        assert json.loads(read_response(reader)[2])["stdout"] == "uploaded"
        reader.close()
        ours.shutdown(socket.SHUT_WR)
        assert process.wait(timeout=30) == 0
    finally:
        ours.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def test_the_stdio_start_imports_no_web_framework():
    """What launch.py imports before it answers (the local sandbox's cold start) holds no
    Flask, werkzeug or prometheus_client: under gVisor's ptrace platform they cost about
    half a second. Uploads import werkzeug's header parser when they need it."""
    from pathlib import Path

    import sandbox_runtime

    root = str(Path(sandbox_runtime.__file__).parent.parent)
    code = ("import sys; sys.path.append(sys.argv[1]); "
            "from sandbox_runtime import launch; launch.defer_imports(launch.LATER); "
            "from sandbox_runtime import keeper, app, config, logs, procs, stdio; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, root],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "sandbox_runtime.routes" in out
    assert [m for m in out if m.split(".")[0] in ("flask", "werkzeug", "prometheus_client")] \
        == []
