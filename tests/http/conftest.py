"""The servers the HTTP tier shares, each started once for as long as its users need it.

- `hooks_server` (session): `sandbox-hooks` under gunicorn as deployed, in its smallest honest
  set-up (one worker, four threads). Hooks are pure functions of the request and keep no
  state between requests, so one server serves every module; `hooks_url` is its base URL.
- `runtime` (module): a `sandbox-runtime` on a fresh workspace, with the small limits of
  runtime_fixtures.SMALL_LIMITS. One per module, because tests write files, start processes
  and count survivors in their own server's workspace.
- `runtime_router` (module): the real router in front of that module's runtime.
- `router_stack` (session): the real router in front of the echoing `Upstream`, the
  misbehaving `RawUpstream` and the SSRF tripwire (router_fixtures.stack), with the router's
  default settings; the tripwire must see no connection all session. Modules that need other
  router settings (a short timeout, a token file, a fake API server) start their own.

Servers listen on 127.0.0.1 only; each runs in its own process group, stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox_common import contract
from testbed.support import free_port, script, serve
from tests.http.router_fixtures import TOKEN, Stack, stack, start_router, write_static
from tests.http.runtime_fixtures import Runtime, runtime_server


@dataclass(frozen=True)
class HooksServer:
    url: str
    port: int
    master: int  # gunicorn's arbiter pid; its one child is the worker

    def worker(self) -> int:
        """The pid of the worker serving now (looked up each time: gunicorn may replace it)."""
        (pid,) = children_of(self.master)
        return pid


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def hooks_server() -> Iterator[HooksServer]:
    port = free_port()
    argv = [script("sandbox-hooks"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--threads", "4"]
    with serve(argv, port, env={"SANDBOX_HOOKS_ACCESS_LOG": ""}) as master:
        yield HooksServer(url=f"http://127.0.0.1:{port}", port=port, master=master.pid)


@pytest.fixture(scope="session")
def hooks_url(hooks_server: HooksServer) -> str:
    return hooks_server.url


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with runtime_server(tmp_path_factory.mktemp("workspace")) as server:
        yield server


@dataclass(frozen=True)
class RuntimeRouter:
    url: str
    sandbox: str  # the name the router knows the runtime by (its default port is the runtime's)
    headers: dict[str, str]  # what a client sends to reach the runtime through the router
    runtime: Runtime


@pytest.fixture(scope="module")
def runtime_router(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RuntimeRouter]:
    port = int(runtime.url.rsplit(":", 1)[1])
    static = write_static(tmp_path_factory.mktemp("runtime-router") / "sandboxes.yaml",
                          {"default/rt": {"addresses": ["127.0.0.1"], "ports": [port]}},
                          allow_loopback=True)
    with start_router(static, env={"SANDBOX_ROUTER_DEFAULT_PORT": str(port)}) as url:
        headers = {"Authorization": f"Bearer {TOKEN}", contract.SANDBOX_ID_HEADER: "rt",
                   contract.SANDBOX_NAMESPACE_HEADER: "default",
                   contract.SANDBOX_PORT_HEADER: str(port)}
        yield RuntimeRouter(url=url, sandbox="rt", headers=headers, runtime=runtime)


@pytest.fixture(scope="session")
def router_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("router-stack")) as shared:
        yield shared
        assert shared.tripwire.connections == 0, shared.tripwire.received
