"""Helpers for the runtime's HTTP-tier tests: a real `sandbox-runtime` process on loopback.

runtime_server() starts one; tests/http/conftest.py's `runtime` fixture gives each module its
own, and modules that need other settings (two workers, a cgroup, a tiny filesystem) start
theirs with it. Settings reach the server through SANDBOX_RUNTIME_* variables, exactly as in
a pod. Nothing here fakes the server or the processes it runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from testbed.support import free_port, script, stop_process, wait_for_port

SMALL_LIMITS = {
    "SANDBOX_RUNTIME_DEFAULT_TIMEOUT_S": "20",
    "SANDBOX_RUNTIME_MAX_TIMEOUT_S": "30",
    "SANDBOX_RUNTIME_MAX_OUTPUT_BYTES": str(64 * 1024),
    "SANDBOX_RUNTIME_MAX_UPLOAD_BYTES": str(1024 * 1024),
    "SANDBOX_RUNTIME_MAX_CONCURRENT_COMMANDS": "4",
    "SANDBOX_RUNTIME_COMMAND_ADDRESS_SPACE_MIB": "256",
    "SANDBOX_RUNTIME_COMMAND_FILE_SIZE_MIB": "2",
    "SANDBOX_RUNTIME_COMMAND_MAX_PROCESSES": "128",
}


class Runtime:
    """A running server: its base URL, workspace and process, plus small request helpers."""

    def __init__(self, url: str, workspace: Path, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.workspace = workspace
        self.process = process
        self.http = requests.Session()

    def run(self, command: str, **fields: object) -> dict:
        response = self.http.post(f"{self.url}/execute", json={"command": command, **fields},
                                  timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.post(f"{self.url}{path}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.get(f"{self.url}{path}", timeout=60, **kwargs)

    def raw_get(self, path: str) -> tuple[int, dict]:
        """GET with the path sent exactly as given (requests would normalise `..` away)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.process.poll() is None and self.get("/").json()["status"] == "ok"


@contextlib.contextmanager
def runtime_server(workspace: Path, env: dict[str, str] | None = None,
                   cgroup: Path | None = None) -> Iterator[Runtime]:
    """`sandbox-runtime --port N --host 127.0.0.1` on `workspace`, optionally in a cgroup."""
    port = free_port()
    argv = [script("sandbox-runtime"), "--port", str(port), "--host", "127.0.0.1",
            "--base-dir", str(workspace)]
    if cgroup is not None:
        # Join the cgroup first, then become the server: every thread and child is inside.
        argv = ["/bin/sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    # The background processes' registry next to the workspace, not in the host's /tmp.
    state = {"SANDBOX_RUNTIME_STATE_DIR": str(workspace.parent / f"{workspace.name}.state")}
    full_env = {**os.environ, **SMALL_LIMITS, **state, **(env or {})}
    process = subprocess.Popen(argv, env=full_env, start_new_session=True,
                               stdout=subprocess.DEVNULL, cwd=str(workspace))
    try:
        wait_for_port(port, process=process)
        yield Runtime(f"http://127.0.0.1:{port}", workspace, process)
    finally:
        stop_process(process)


def processes() -> Iterator[tuple[int, int, str, bytes]]:
    """(pid, parent pid, state, argv joined by spaces) of every process /proc shows now."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(entry), int(fields[1]), fields[0], cmdline


def processes_with(token: str) -> list[int]:
    """Live (non-zombie) pids whose command line contains `token`."""
    return [pid for pid, _, state, cmdline in processes()
            if token.encode() in cmdline and state not in ("Z", "X")]


def wait_until_gone(token: str, timeout: float = 5.0) -> list[int]:
    """Survivors carrying `token` after up to `timeout` seconds (kills take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
