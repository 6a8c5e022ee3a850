"""The client's behaviour (tests/client_behaviour.py) against the real runtime over TCP.

The runtime runs under gunicorn on loopback (two workers: a background process started
through one is seen, waited for and killed through the other); the clients reach it with
httpx's TCP transports, the ones the Kubernetes backend uses to the router
(agentic_sandbox._backends.router). Each behaviour runs with SandboxClient and with
AsyncSandboxClient.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentic_sandbox import Endpoint
from agentic_sandbox._backends.router import router_async_transport, router_transport
from tests.client_behaviour import *  # noqa: F403 (the behaviours are the tests)
from tests.client_behaviour import Driver, close_driver, open_driver
from tests.http.runtime_fixtures import Runtime, runtime_server

MAX_PROCESSES = 3


class DirectRuntime:
    """A Backend whose Endpoint is the runtime's own URL, over the router's transports."""

    name = "direct"

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> Endpoint:
        return Endpoint(base_url=self.url, transport=router_transport(self.url),
                        async_transport=router_async_transport(self.url))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    workspace = tmp_path_factory.mktemp("behaviour")
    with runtime_server(workspace, env={"SANDBOX_RUNTIME_WORKERS": "2",
                                        "SANDBOX_RUNTIME_MAX_PROCESSES":
                                            str(MAX_PROCESSES)}) as runtime:
        yield runtime


@pytest.fixture(scope="module", params=["sync", "async"])
def sandbox(request: pytest.FixtureRequest, server: Runtime) -> Iterator[Driver]:
    driver = open_driver(request.param, lambda cls: cls(
        "tpl", backend=DirectRuntime(server.url), run_timeout=20))
    yield driver
    close_driver(driver)


@pytest.fixture
def max_processes() -> int:
    return MAX_PROCESSES
