"""What SandboxClient and AsyncSandboxClient share that does no IO: options, backend, state.

BaseClient checks the constructor's arguments, makes the Backend (agentic_sandbox._backends)
and holds the lifecycle state (State) and the endpoint once open; DEFAULT and Timeout spell a
command timeout that was not given; ProcessHandle is what Process and AsyncProcess hold (the
client and the process's id). Subclassed by agentic_sandbox._client (sync) and
agentic_sandbox._async_client (asyncio), which add the IO. It must not send a byte, open a
backend or know how a backend reaches its sandbox.
"""

from __future__ import annotations

import enum
import math
import os
import threading
import time
from typing import Any, Final, Generic, TypeVar

import httpx2

from agentic_sandbox._backends.base import Backend, Endpoint
from agentic_sandbox._backends.choice import choose_backend, make_backend
from agentic_sandbox._options import KubernetesOptions, LocalOptions
from agentic_sandbox._protocol import Call, retry_wait
from sandbox_common.durations import idle_timeout_seconds

__all__ = ["DEFAULT", "BaseClient", "ProcessHandle", "State", "Timeout"]


class _UseDefault(enum.Enum):
    """'Not given' differs from None (httpx's UseClientDefault): None means no limit."""

    DEFAULT = "default"


DEFAULT: Final = _UseDefault.DEFAULT
Timeout = float | None | _UseDefault


class State(enum.Enum):
    """Where a client is in its one life: not yet open, open, closed for good."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def seconds(label: str, value: Any) -> float | None:
    """A timeout as given (None: no limit), or ValueError unless it is a finite number of
    seconds above 0 (inf or NaN would open a sandbox, then fail as a JSON error)."""
    if value is not None and not 0 < value < math.inf:
        raise ValueError(f"{label} must be a finite number of seconds above 0, or None, "
                         f"not {value!r}")
    return value  # type: ignore[no-any-return]


class BaseClient:
    """What a sync and an async client share: options, the backend, the lifecycle state."""

    def __init__(self, template_name: str, namespace: str = "default", *,
                 backend: str | Backend = "auto",
                 sandbox_ready_timeout: float = 180.0,
                 request_timeout: float | None = 60.0,
                 run_timeout: float | None = 60.0,
                 api_url: str | None = None,
                 connection: str | None = None,
                 router_token: str | None = None,
                 kubeconfig: str | os.PathLike[str] | None = None,
                 context: str | None = None,
                 router_service: str = "sandbox-router-svc",
                 router_namespace: str | None = None,
                 router_port: int = 8080,
                 server_port: int = 8888,
                 templates_dir: str | os.PathLike[str] | None = None,
                 warm_pool: int | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 idle_timeout: str | int | None = None,
                 attach: str | None = None) -> None:
        if not template_name or not isinstance(template_name, str):
            raise ValueError("template_name must be a non-empty string")
        for label, value in (("sandbox_ready_timeout", sandbox_ready_timeout),
                             ("request_timeout", request_timeout),
                             ("run_timeout", run_timeout)):
            seconds(label, value)
        idle_timeout_seconds(idle_timeout)  # a bad value fails here, whichever backend
        self.template_name = template_name
        self.namespace = namespace
        self.sandbox_ready_timeout = float(sandbox_ready_timeout)
        self.request_timeout = request_timeout
        self.run_timeout = run_timeout
        if isinstance(backend, str):
            self._backend = make_backend(
                choose_backend(backend, api_url=api_url), template_name, namespace,
                ready_timeout=self.sandbox_ready_timeout, attach=attach,
                local=LocalOptions(templates_dir=templates_dir, warm_pool=warm_pool,
                                   state_dir=state_dir, idle_timeout=idle_timeout),
                kubernetes=KubernetesOptions(
                    api_url=api_url, connection=connection, router_token=router_token,
                    kubeconfig=kubeconfig, context=context, router_service=router_service,
                    router_namespace=router_namespace, router_port=router_port,
                    server_port=server_port, idle_timeout=idle_timeout))
        elif isinstance(backend, Backend):
            self._backend = backend
        else:
            raise TypeError("backend must be 'local', 'kubernetes', 'auto' or a Backend")
        self._state = State.UNOPENED
        self._state_lock = threading.Lock()
        self._endpoint: Endpoint | None = None

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def sandbox_name(self) -> str:
        """The Sandbox's name (Kubernetes) or the runsc container's id (local)."""
        return self._endpoint.sandbox_name if self._endpoint else ""

    def _check_reopen(self) -> None:
        if self._state is State.CLOSED:
            raise RuntimeError("this SandboxClient was closed; its sandbox is gone. "
                               "Create a new SandboxClient for a new sandbox.")

    def _not_open(self) -> RuntimeError:
        return RuntimeError("the sandbox is not open: use `with SandboxClient(...) as "
                            "sandbox:` (or call open())")

    def _run_timeout(self, timeout: Timeout) -> float | None:
        return seconds("timeout", self.run_timeout if timeout is DEFAULT else timeout)

    def _resend_wait(self, call: Call[Any], response: httpx2.Response,
                     started: float) -> float | None:
        """retry_wait() for a call first sent at `started` (time.monotonic()): seconds to
        wait before sending it again after this answer, or None to keep the answer."""
        return retry_wait(call, response.status_code, response.headers,
                          elapsed=time.monotonic() - started,
                          budget=self.sandbox_ready_timeout, now=time.time())


ClientT = TypeVar("ClientT", bound=BaseClient)


class ProcessHandle(Generic[ClientT]):
    """A background process by its id, on the client that reaches it (Process, AsyncProcess)."""

    def __init__(self, client: ClientT, process_id: str, command: str = "") -> None:
        self.client = client
        self.id = process_id
        self.command = command

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, command={self.command!r})"
