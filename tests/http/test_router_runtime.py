"""End to end through the real runtime server: the router in front of `sandbox-runtime`.

Both are real processes on loopback; the router's static source points the sandbox `rt` at
the runtime. Skipped, with the reason, when the runtime package is not there.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import requests

from testbed.support import script

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sandbox_runtime") is None
    or not Path(script("sandbox-runtime")).exists(),
    reason="sandbox_runtime (the `sandbox-runtime` script) is not installed")


@pytest.fixture
def env(runtime_router):
    """The router in front of this module's runtime (tests/http/conftest.py)."""
    return runtime_router.url, runtime_router.headers, runtime_router.runtime.workspace


def test_root_and_execute_through_the_router(env):
    url, headers, _ = env
    assert requests.get(url + "/", headers=headers, timeout=10).status_code == 200
    answer = requests.post(url + "/execute", json={"command": "echo 'Hello from the sandbox'"},
                           headers=headers, timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    assert body["stdout"] == "Hello from the sandbox\n"
    assert body["exit_code"] == 0


def test_streaming_output_arrives_while_the_command_runs(env):
    url, headers, base = env
    gate = base / "go"
    # The command prints, then waits for a file only the test creates after reading that
    # line: a router that buffered the stream would leave both waiting (bounded by the loop).
    command = ("echo first; i=0; while [ ! -f go ] && [ $i -lt 400 ]; "
               "do sleep 0.05; i=$((i+1)); done; echo second")
    response = requests.post(url + "/execute/stream", json={"command": command},
                             headers=headers, stream=True, timeout=30)
    assert response.status_code == 200
    lines = response.iter_lines()
    first = json.loads(next(lines))
    assert first == {"stream": "stdout", "data": "first\n"}
    gate.write_text("")
    rest = [json.loads(line) for line in lines if line]
    assert {"stream": "stdout", "data": "second\n"} in rest
    assert rest[-1]["exit_code"] == 0


def test_upload_download_list_exists_through_the_router(env):
    url, headers, _ = env
    payload = bytes(range(256)) * 4096
    up = requests.post(url + "/upload", files={"file": ("blob.bin", payload)},
                       headers=headers, timeout=30)
    assert up.status_code == 200, up.text
    down = requests.get(url + "/download/blob.bin", headers=headers, timeout=30)
    assert down.status_code == 200
    assert down.content == payload
    listing = requests.get(url + "/list/", headers=headers, timeout=10)
    assert listing.status_code == 200
    assert "blob.bin" in listing.text
    exists = requests.get(url + "/exists/blob.bin", headers=headers, timeout=10)
    assert exists.status_code == 200
    assert exists.json().get("exists") is True


def test_runtime_errors_pass_through_as_json(env):
    url, headers, _ = env
    missing = requests.get(url + "/download/nope.txt", headers=headers, timeout=10)
    assert missing.status_code == 404
    assert "error" in missing.json()
