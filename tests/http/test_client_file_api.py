"""The file API (tests/file_api_cases.py) through SandboxClient, against `sandbox-runtime`
under gunicorn over TCP, with SandboxClient and AsyncSandboxClient: stat, mkdir, remove,
move, copy, streamed uploads, directories as tar streams, hostile archives and symlinks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client_behaviour import Driver, close_driver, open_driver
from tests.file_api_cases import *  # noqa: F403 - the tests themselves
from tests.file_api_cases import ENTRIES, LIMIT
from tests.http.runtime_fixtures import Runtime, runtime_server
from tests.http.test_client_behaviour_tcp import DirectRuntime


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    workspace = tmp_path_factory.mktemp("workspace")
    env = {"SANDBOX_RUNTIME_MAX_UPLOAD_BYTES": str(LIMIT),
           "SANDBOX_RUNTIME_MAX_ARCHIVE_ENTRIES": str(ENTRIES)}
    with runtime_server(workspace, env) as runtime:
        yield runtime


@pytest.fixture(scope="module", params=["sync", "async"])
def box(request: pytest.FixtureRequest, server: Runtime) -> Iterator[Driver]:
    """SandboxClient, or AsyncSandboxClient behind the same sync face (tests/client_behaviour)."""
    driver = open_driver(request.param, lambda cls: cls(
        "unused", backend=DirectRuntime(server.url), run_timeout=20))
    yield driver
    close_driver(driver)


@pytest.fixture(scope="module")
def surface() -> str:
    return "runtime"


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory of the host outside the runtime's workspace (commands run on the host)."""
    path = tmp_path_factory.mktemp(f"outside-{uuid.uuid4().hex[:6]}")
    (path / "keep").write_text("keep\n")
    return str(Path(path))
