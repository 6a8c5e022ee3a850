"""The file API (tests/file_api_cases.py) through the local backend: the runtime inside
gVisor, reached over its socketpair, with SandboxClient and AsyncSandboxClient. Same tests as
tests/http/test_client_file_api.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client_behaviour import Driver, close_driver, open_driver
from tests.dataplane.conftest import write_template
from tests.file_api_cases import *  # noqa: F403 - the tests themselves
from tests.file_api_cases import ENTRIES, LIMIT


@pytest.fixture(scope="module", params=["sync", "async"])
def box(request: pytest.FixtureRequest, state_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    """SandboxClient, or AsyncSandboxClient behind the same sync face (tests/client_behaviour)."""
    folder = write_template(
        tmp_path_factory.mktemp("templates"), "file-api",
        f"env: [{{name: SANDBOX_RUNTIME_MAX_UPLOAD_BYTES, value: '{LIMIT}'}}, "
        f"{{name: SANDBOX_RUNTIME_MAX_ARCHIVE_ENTRIES, value: '{ENTRIES}'}}]")
    driver = open_driver(request.param, lambda cls: cls(
        "file-api", backend="local", templates_dir=str(folder), state_dir=state_dir,
        warm_pool=0))
    yield driver
    close_driver(driver)


@pytest.fixture(scope="module")
def surface() -> str:
    return "local"


@pytest.fixture
def outside(box: Driver) -> str:
    """A directory inside the sandbox but outside its workspace."""
    path = f"/tmp/outside-{uuid.uuid4().hex[:8]}"
    result = box.run(f"mkdir -p {path} && echo keep > {path}/keep")
    assert result.ok, result
    return path
