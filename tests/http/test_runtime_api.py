"""The runtime's HTTP API on a real server: execute, stream, files, validation, confinement."""

from __future__ import annotations

import http.client
import json
import os

import pytest
import requests


def test_index_and_healthz_answer_ok(runtime):
    assert runtime.get("/").json()["status"] == "ok"
    assert runtime.get("/healthz").json() == {"status": "ok"}


def test_execute_returns_stdout_stderr_exit_code_and_flags(runtime):
    out = runtime.run("echo hi; echo oops >&2; exit 3")
    assert out == {"stdout": "hi\n", "stderr": "oops\n", "exit_code": 3, "signal": None,
                   "timed_out": False, "stdout_truncated": False, "stderr_truncated": False}


def test_execute_uses_a_shell_with_pipes_and_redirects(runtime):
    out = runtime.run("printf 'b\\na\\n' | sort > sorted.txt && cat sorted.txt && echo $0 $#")
    assert out["stdout"] == "a\nb\nsh 0\n"
    assert (runtime.workspace / "sorted.txt").read_text() == "a\nb\n"


def test_execute_runs_in_workspace_with_env_and_cwd(runtime):
    (runtime.workspace / "sub").mkdir(exist_ok=True)
    out = runtime.run("pwd; echo $GREETING", env={"GREETING": "hello"}, cwd="sub")
    assert out["stdout"] == f"{os.path.realpath(runtime.workspace / 'sub')}\nhello\n"


def test_a_shell_killed_by_a_signal_reports_128_plus_n_and_the_signal(runtime):
    out = runtime.run("echo before; kill -TERM $$; echo after")
    assert (out["stdout"], out["exit_code"], out["signal"]) == ("before\n", 143, "SIGTERM")
    out = runtime.run("exit 3")
    assert (out["exit_code"], out["signal"]) == (3, None)
    out = runtime.run("sleep 30", timeout=0.5)
    assert (out["exit_code"], out["signal"], out["timed_out"]) == (137, "SIGKILL", True)
    stream = runtime.post("/execute/stream", json={"command": "kill -KILL $$"})
    final = json.loads(stream.text.splitlines()[-1])
    assert (final["exit_code"], final["signal"]) == (137, "SIGKILL")


def test_execute_hides_server_settings_and_command_variable(runtime):
    out = runtime.run("env | grep -c SANDBOX_RUNTIME_MAX || true; set | grep -c __sandbox_cmd")
    assert out["stdout"].split() == ["0", "0"]


@pytest.mark.parametrize(("body", "field"), [
    ({"command": 1}, "command"),
    ({}, "command"),
    ({"command": "true", "timeout": "5"}, "timeout"),
    ({"command": "true", "timeout": True}, "timeout"),
    ({"command": "true", "timeout": 0}, "timeout"),
    ({"command": "true", "timeout": 10_000}, "timeout"),
    ({"command": "true", "env": {"A": 1}}, "env"),
    ({"command": "true", "env": {"1BAD": "x"}}, "env"),
    ({"command": "true", "env": ["A=1"]}, "env"),
    ({"command": "true", "cwd": 5}, "cwd"),
    ({"command": "true", "extra": 1}, "extra"),
    ({"command": "a\u0000b"}, "command"),
])
def test_execute_rejects_bad_fields_naming_them(runtime, body, field):
    response = runtime.post("/execute", json=body)
    assert response.status_code == 400
    assert field in response.json()["error"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"{", b"\xff\xfe"])
def test_execute_rejects_non_object_bodies(runtime, raw):
    response = runtime.post("/execute", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]


def test_execute_cwd_outside_or_missing(runtime):
    assert runtime.post("/execute", json={"command": "true", "cwd": "../.."}).status_code == 403
    assert runtime.post("/execute", json={"command": "true", "cwd": "/etc"}).status_code == 403
    assert runtime.post("/execute", json={"command": "true", "cwd": "nowhere"}).status_code == 404


def test_stream_sends_chunks_then_the_exit(runtime):
    response = runtime.post("/execute/stream", stream=True,
                            json={"command": "echo one; sleep 0.2; echo two >&2; exit 4"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.iter_lines() if line]
    chunks = [line for line in lines if "stream" in line]
    assert "".join(c["data"] for c in chunks if c["stream"] == "stdout") == "one\n"
    assert "".join(c["data"] for c in chunks if c["stream"] == "stderr") == "two\n"
    assert lines[-1] == {"exit_code": 4, "signal": None, "timed_out": False,
                         "stdout_truncated": False, "stderr_truncated": False}


def test_stream_delivers_output_before_the_command_ends(runtime):
    response = runtime.post("/execute/stream", stream=True,
                            json={"command": "echo early; sleep 1.5; echo late"})
    lines = response.iter_lines()
    first = json.loads(next(lines))
    assert first == {"stream": "stdout", "data": "early\n"}
    rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["exit_code"] == 0


def test_stream_head_comes_before_the_command_s_first_output(runtime):
    """The head is sent at once: stream() returns while the command is still silent (it
    waits for the test to let it go on), so a client can read on or hang up."""
    try:
        response = runtime.http.post(
            f"{runtime.url}/execute/stream", stream=True, timeout=(10, 30),
            json={"command": "until [ -e go ]; do sleep 0.05; done; echo done"})
    finally:
        (runtime.workspace / "go").touch()
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0] == {"stream": "stdout", "data": "done\n"}
    assert lines[-1]["exit_code"] == 0


def test_downloads_keep_the_connection_alive(runtime):
    """gunicorn sends files with sendfile(); the connection must serve the next request."""
    (runtime.workspace / "twice.bin").write_bytes(b"t" * 200_000)
    host, port = runtime.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        for _ in range(3):
            conn.request("GET", "/download/twice.bin")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"t" * 200_000)
            assert not response.will_close
    finally:
        conn.close()


def test_stream_validates_like_execute(runtime):
    response = runtime.post("/execute/stream", json={"command": "true", "bogus": 1})
    assert response.status_code == 400
    assert "bogus" in response.json()["error"]


def test_upload_download_list_exists_round_trip(runtime):
    payload = os.urandom(300_000)
    response = runtime.post("/upload", files={"file": ("data/nested/blob.bin", payload)})
    assert response.status_code == 200, response.text
    assert response.json() == {"path": "data/nested/blob.bin", "size": len(payload)}
    assert runtime.get("/download/data/nested/blob.bin").content == payload
    assert runtime.get("/exists/data/nested/blob.bin").json() == {
        "path": "data/nested/blob.bin", "exists": True}
    assert runtime.get("/exists/data/nested/none").json()["exists"] is False
    os.symlink("blob.bin", runtime.workspace / "data/nested/link")
    (runtime.workspace / "data/nested/dir").mkdir()
    listing = runtime.get("/list/data/nested").json()
    assert listing == [
        {"name": "blob.bin", "type": "file", "size": len(payload)},
        {"name": "dir", "type": "directory", "size": listing[1]["size"]},
        {"name": "link", "type": "symlink", "size": len("blob.bin")},
    ]
    # Nothing half-written is left beside the file.
    assert sorted(os.listdir(runtime.workspace / "data/nested")) == ["blob.bin", "dir", "link"]


def test_upload_overwrites_and_command_sees_it(runtime):
    runtime.post("/upload", files={"file": ("note.txt", b"first")})
    runtime.post("/upload", files={"file": ("note.txt", b"second")})
    assert runtime.run("cat note.txt")["stdout"] == "second"


def test_list_root_and_errors(runtime):
    names = [entry["name"] for entry in runtime.get("/list/").json()]
    assert names == sorted(names)
    assert runtime.get("/list/missing").status_code == 404
    runtime.post("/upload", files={"file": ("plain.txt", b"x")})
    assert runtime.get("/list/plain.txt").status_code == 400
    assert runtime.get("/download/missing.txt").status_code == 404
    assert runtime.get("/download/data").status_code in (400, 404)


@pytest.mark.parametrize("path", ["../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
                                  "//etc/passwd", "escape/passwd", "escape"])
def test_paths_outside_the_workspace_are_forbidden(runtime, path):
    link = runtime.workspace / "escape"
    if not link.is_symlink():
        os.symlink("/etc", link)
    for route in ("download", "list", "exists"):
        status, body = runtime.raw_get(f"/{route}/{path}")
        assert status == 403, (route, path, body)
        assert "outside the workspace" in body["error"]


def test_upload_outside_the_workspace_is_forbidden(runtime, tmp_path):
    outside = tmp_path / "victim"
    outside.mkdir()
    os.symlink(outside, runtime.workspace / "out-link")
    for name in ("../evil.txt", "/tmp/evil.txt", "out-link/evil.txt"):
        response = runtime.post("/upload", files={"file": (name, b"pwned")})
        assert response.status_code == 403, (name, response.text)
    assert list(outside.iterdir()) == []
    assert not os.path.exists("/tmp/evil.txt")


def test_upload_onto_a_symlink_pointing_outside_is_forbidden(runtime, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, runtime.workspace / "swap.txt")
    response = runtime.post("/upload", files={"file": ("swap.txt", b"new")})
    assert response.status_code == 403
    assert target.read_text() == "keep"


def test_upload_over_the_cap_is_413_and_leaves_nothing(runtime):
    before = set(os.listdir(runtime.workspace))
    # A fresh connection: the server may answer before reading the body, then close.
    response = requests.post(f"{runtime.url}/upload", timeout=60,
                             files={"file": ("big.bin", b"x" * (2 * 1024 * 1024))})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert set(os.listdir(runtime.workspace)) == before


def test_upload_over_the_cap_without_length_is_413(runtime):
    boundary = "b0undary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"chunked.bin\"\r\n\r\n").encode()
        for _ in range(40):
            yield b"y" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = requests.post(f"{runtime.url}/upload", data=body(), timeout=60, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert not (runtime.workspace / "chunked.bin").exists()


@pytest.mark.parametrize(("headers", "data"), [
    ({"Content-Type": "application/json"}, b"{}"),
    ({"Content-Type": "multipart/form-data"}, b"--x\r\n"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"garbage without boundary"),
    ({"Content-Type": "multipart/form-data; boundary=x"},
     b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.txt\"\r\n\r\nabc"),
    ({"Content-Type": "multipart/form-data; boundary=x"},
     b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--x--\r\n"),
])
def test_malformed_uploads_are_400(runtime, headers, data):
    response = runtime.post("/upload", data=data, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert not (runtime.workspace / "cut.txt").exists()


def test_unknown_routes_and_methods_answer_json(runtime):
    response = runtime.get("/nope")
    assert response.status_code == 404
    assert "error" in response.json()
    response = runtime.get("/execute")
    assert response.status_code == 405
    assert "error" in response.json()


def test_metrics_count_commands(runtime):
    runtime.run("true")
    text = runtime.get("/metrics").text
    assert 'sandbox_runtime_commands_total{outcome="exit"}' in text
    assert "sandbox_runtime_commands_running 0.0" in text
