"""The file API (tests/file_api_cases.py) through SandboxClient, against `sandbox-runtime`
under gunicorn over TCP: stat, mkdir, remove, move, copy, streamed uploads, directories as
tar streams, and hostile archives and symlinks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from agentic_sandbox import Endpoint, SandboxClient
from tests.file_api_cases import *  # noqa: F403 - the tests themselves
from tests.file_api_cases import ENTRIES, LIMIT
from tests.http.runtime_fixtures import runtime_server


class TCPRuntime:
    """A Backend whose endpoint is a runtime already listening on loopback."""

    name = "tcp"

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> Endpoint:
        return Endpoint(base_url=self.url, transport=httpx2.HTTPTransport())

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxClient]:
    workspace = tmp_path_factory.mktemp("workspace")
    env = {"SANDBOX_RUNTIME_MAX_UPLOAD_BYTES": str(LIMIT),
           "SANDBOX_RUNTIME_MAX_ARCHIVE_ENTRIES": str(ENTRIES)}
    with runtime_server(workspace, env) as server, \
            SandboxClient("unused", backend=TCPRuntime(server.url),
                          run_timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def surface() -> str:
    return "runtime"


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory of the host outside the runtime's workspace (commands run on the host)."""
    path = tmp_path_factory.mktemp(f"outside-{uuid.uuid4().hex[:6]}")
    (path / "keep").write_text("keep\n")
    return str(Path(path))
