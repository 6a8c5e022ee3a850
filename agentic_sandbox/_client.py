"""SandboxClient: the walkthrough's front door, on Kubernetes or on this machine under gVisor.

Used by agent code as `with SandboxClient(template_name=..., namespace=...) as sandbox:`.
Enter asks a Backend (agentic_sandbox._backends) for a ready sandbox; exit always releases it,
also when entering failed halfway. Every runtime call goes through `SandboxClient._request()`,
which adds the endpoint's headers, applies a timeout, maps failures to our error tree and
decides replays: idempotent GETs may be retried once on a connection failure, a POST
(`/execute`, `/upload`) only when it provably never left this process (the connection was
never established). This module must not know how a backend reaches its sandbox.
"""

from __future__ import annotations

import builtins
import enum
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import requests
import urllib3.exceptions

from agentic_sandbox._backends.base import Backend, Endpoint
from agentic_sandbox._exceptions import (
    SandboxConnectionError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from agentic_sandbox._models import ExecutionResult, FileEntry, OutputChunk
from sandbox_common import contract

__all__ = ["BACKEND_ENV", "CommandStream", "SandboxClient", "choose_backend"]

log = logging.getLogger(__name__)

BACKEND_ENV: Final = "AGENTIC_SANDBOX_BACKEND"
BACKEND_NAMES: Final = ("local", "kubernetes")
CONNECT_TIMEOUT_S: Final = 10.0
# Past a command's own deadline the runtime still kills its tree and sends the output;
# the HTTP read deadline waits this much longer before calling the runtime unresponsive.
RUN_GRACE_S: Final = 30.0
MAX_ERROR_BODY: Final = 64 * 1024


class _UseDefault(enum.Enum):
    """'Not given' differs from None (httpx's UseClientDefault): None means no limit."""

    DEFAULT = "default"


DEFAULT: Final = _UseDefault.DEFAULT
Timeout = float | None | _UseDefault


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def choose_backend(explicit: str | None = None, *, api_url: str | None = None,
                   environ: Mapping[str, str] | None = None,
                   home: Path | None = None) -> Literal["local", "kubernetes"]:
    """Pick the backend by a fixed, documented rule (docs/client.md, "Choosing a backend").

    1. an explicit `backend="local"|"kubernetes"` argument;
    2. else the AGENTIC_SANDBOX_BACKEND environment variable;
    3. else "kubernetes" when `api_url` is given, KUBECONFIG is set, ~/.kube/config exists or
       the process runs in a pod (KUBERNETES_SERVICE_HOST); 4. else "local".
    """
    env = os.environ if environ is None else environ
    for source, value in (("backend=", explicit), (BACKEND_ENV, env.get(BACKEND_ENV))):
        if value and value != "auto":
            if value not in BACKEND_NAMES:
                raise ValueError(f"{source} must be 'local', 'kubernetes' or 'auto', "
                                 f"not {value!r}")
            return value  # type: ignore[return-value]
    home = Path.home() if home is None else home
    if (api_url or env.get("KUBECONFIG") or (home / ".kube" / "config").is_file()
            or env.get("KUBERNETES_SERVICE_HOST")):
        return "kubernetes"
    return "local"


def _url_path(path: str) -> str:
    """Quote a sandbox path for a URL without letting anything normalise it on the way.

    urllib3 removes `.` and `..` segments from URLs, which would turn `../../etc/passwd`
    into a different file; the runtime must see the path as given (it confines it and
    answers 403), so dot segments travel percent-encoded.
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if "\x00" in path:
        raise ValueError("path must not contain NUL")
    parts = []
    for part in path.split("/"):
        if part in (".", ".."):
            parts.append(part.replace(".", "%2E"))
        else:
            parts.append(quote(part, safe=""))
    return "/".join(parts)


def _error_message(response: requests.Response, body: bytes) -> str:
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or response.reason or "error"


class CommandStream:
    """A running command's output, chunk by chunk; then its exit code.

    Iterate to get OutputChunk objects as the runtime sends them; when iteration ends,
    `exit_code`, `timed_out` and `result` are set. Closing it early (or leaving its `with`
    block) hangs up, and the runtime kills the command's process tree.

        with sandbox.stream("make test") as stream:
            for chunk in stream:
                print(chunk.data, end="")
        print(stream.exit_code)
    """

    def __init__(self, response: requests.Response, command: str) -> None:
        self._response = response
        self._command = command
        self._lines = response.iter_lines(chunk_size=None)
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._final: dict[str, Any] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[OutputChunk]:
        try:
            for raw in self._lines:
                if not raw:
                    continue
                try:
                    event = json.loads(raw)
                except ValueError as exc:
                    raise SandboxConnectionError("the runtime sent a malformed stream line") \
                        from exc
                if not isinstance(event, dict):
                    raise SandboxConnectionError("the runtime sent a malformed stream line")
                if "stream" in event:
                    chunk = OutputChunk(stream=str(event["stream"]), data=str(event["data"]))
                    (self._stdout if chunk.stream == "stdout" else self._stderr).append(
                        chunk.data)
                    yield chunk
                else:
                    self._final = event
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            self.close()
            raise _map_transport_error(exc, "streaming " + repr(self._command)) from exc
        finally:
            if self._final is not None:
                self.close()
        if self._final is None:
            self.close()
            raise SandboxConnectionError(
                "the output stream ended before the command's exit status arrived")

    @property
    def exit_code(self) -> int | None:
        """The command's exit status once the stream ended, else None."""
        return None if self._final is None else int(self._final.get("exit_code", -1))

    @property
    def timed_out(self) -> bool:
        return bool(self._final and self._final.get("timed_out"))

    @property
    def result(self) -> ExecutionResult | None:
        """Everything the stream carried, as run() would have returned it."""
        if self._final is None:
            return None
        return ExecutionResult(
            stdout="".join(self._stdout), stderr="".join(self._stderr),
            exit_code=int(self._final.get("exit_code", -1)),
            timed_out=bool(self._final.get("timed_out")),
            stdout_truncated=bool(self._final.get("stdout_truncated")),
            stderr_truncated=bool(self._final.get("stderr_truncated")))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _map_transport_error(exc: BaseException, what: str) -> SandboxError:
    if isinstance(exc, requests.ConnectTimeout):
        return SandboxConnectionError(f"{what}: could not connect in time ({exc})")
    if isinstance(exc, requests.Timeout | urllib3.exceptions.ReadTimeoutError):
        return SandboxTimeoutError(f"{what}: no answer in time ({exc})")
    return SandboxConnectionError(f"{what}: {exc}")


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


class SandboxClient:
    """A sandbox for the length of a `with` block: run commands and move files in it.

    Args:
        template_name: the SandboxTemplate to make the sandbox from.
        namespace: the Kubernetes namespace of the claim (locally: only recorded).
        backend: "local", "kubernetes", "auto" (the default: see choose_backend) or a
            Backend object.
        sandbox_ready_timeout: seconds to wait for a ready sandbox on enter.
        request_timeout: seconds a file call or health check may take (None: no limit).
        run_timeout: default command timeout for run() and stream() (the runtime kills the
            command's process tree when it passes); None leaves it to the runtime (60 s).
        Kubernetes only: api_url (a gateway or a direct router URL), connection ("tunnel",
            "direct", "in-cluster"; default: direct when api_url is given, else tunnel),
            router_token (else $AGENTIC_SANDBOX_ROUTER_TOKEN), kubeconfig, context,
            router_service, router_namespace, router_port, server_port.
        Local only: templates_dir (folders of SandboxTemplate YAML, else
            $AGENTIC_SANDBOX_TEMPLATES), warm_pool (spare sandboxes kept ready in this
            process), state_dir.
        attach: the name of a sandbox that already exists and outlives this client (on
            Kubernetes a SandboxClaim, locally one made by `agentic-sandbox create NAME`):
            enter waits for it instead of making one, exit leaves it running.

    Example:
        with SandboxClient(template_name="python-runtime-template") as sandbox:
            print(sandbox.run("echo hello").stdout)
    """

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
                 attach: str | None = None) -> None:
        if not template_name or not isinstance(template_name, str):
            raise ValueError("template_name must be a non-empty string")
        for label, value in (("sandbox_ready_timeout", sandbox_ready_timeout),
                             ("request_timeout", request_timeout),
                             ("run_timeout", run_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be positive or None, not {value!r}")
        self.template_name = template_name
        self.namespace = namespace
        self.sandbox_ready_timeout = float(sandbox_ready_timeout)
        self.request_timeout = request_timeout
        self.run_timeout = run_timeout
        if isinstance(backend, str):
            name = choose_backend(backend, api_url=api_url)
            self._backend = self._make_backend(name, locals())
        elif isinstance(backend, Backend):
            self._backend = backend
        else:
            raise TypeError("backend must be 'local', 'kubernetes', 'auto' or a Backend")
        self._state = _State.UNOPENED
        self._state_lock = threading.Lock()
        self._endpoint: Endpoint | None = None
        self._session: requests.Session | None = None

    def _make_backend(self, name: str, options: dict[str, Any]) -> Backend:
        # Imported here so `import agentic_sandbox` stays light and a missing optional
        # dependency only matters to the backend that needs it.
        attach = options["attach"]
        if attach is not None and (not isinstance(attach, str) or not attach):
            raise ValueError("attach must be a non-empty sandbox name")
        if name == "local" and attach is not None:
            from agentic_sandbox._holder import HeldBackend
            return HeldBackend(attach, state_dir=options["state_dir"])
        if name == "local":
            from agentic_sandbox._backends.local import LocalBackend
            return LocalBackend(
                self.template_name, self.namespace,
                ready_timeout=self.sandbox_ready_timeout,
                templates_dir=options["templates_dir"], warm_pool=options["warm_pool"],
                state_dir=options["state_dir"])
        from agentic_sandbox._backends.kubernetes import KubernetesBackend
        return KubernetesBackend(
            self.template_name, self.namespace,
            ready_timeout=self.sandbox_ready_timeout, api_url=options["api_url"],
            connection=options["connection"], router_token=options["router_token"],
            kubeconfig=options["kubeconfig"], context=options["context"],
            router_service=options["router_service"],
            router_namespace=options["router_namespace"],
            router_port=options["router_port"], server_port=options["server_port"],
            claim=attach, attach=attach is not None)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def sandbox_name(self) -> str:
        """The Sandbox's name (Kubernetes) or the runsc container's id (local)."""
        return self._endpoint.sandbox_name if self._endpoint else ""

    def open(self) -> SandboxClient:
        """Get a ready sandbox (what `with` does on enter)."""
        with self._state_lock:
            if self._state is _State.OPEN:
                return self
            if self._state is _State.CLOSED:
                raise RuntimeError("this SandboxClient was closed; its sandbox is gone. "
                                   "Create a new SandboxClient for a new sandbox.")
            try:
                endpoint = self._backend.open()
            except BaseException:
                # Release whatever was acquired before the failure (claim, tunnel, runsc).
                self._state = _State.CLOSED
                self._backend.close()
                raise
            session = requests.Session()
            session.trust_env = False  # no proxies or netrc from the environment
            session.mount(endpoint.base_url + "/", endpoint.adapter)
            self._endpoint, self._session = endpoint, session
            self._state = _State.OPEN
            log.debug("sandbox ready: %s", endpoint.description or endpoint.base_url)
            return self

    def close(self) -> None:
        """Release the sandbox; safe to call twice."""
        with self._state_lock:
            if self._state is _State.CLOSED and self._session is None:
                return
            self._state = _State.CLOSED
            session, self._session = self._session, None
            try:
                if session is not None:
                    session.close()
            finally:
                self._backend.close()

    def __enter__(self) -> SandboxClient:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the one way to the runtime -------------------------------------------------------

    def _request(self, method: str, path: str, *, timeout: float | None,
                 json_body: Mapping[str, Any] | None = None,
                 files: Mapping[str, Any] | None = None,
                 stream: bool = False) -> requests.Response:
        """Send one request to the runtime: headers, timeout, error mapping, replay rule."""
        if self._state is not _State.OPEN or self._session is None or self._endpoint is None:
            raise RuntimeError("the sandbox is not open: use `with SandboxClient(...) as "
                               "sandbox:` (or call open())")
        endpoint, session = self._endpoint, self._session
        url = endpoint.base_url + path
        what = f"{method} {path.split('?')[0][:120]}"
        idempotent = method in ("GET", "HEAD")
        attempts = 2
        for attempt in range(attempts):
            try:
                prepared = session.prepare_request(requests.Request(
                    method, url, headers=dict(endpoint.headers), json=json_body, files=files))
                # requests re-quotes URLs (%2E back to "."); keep the path exactly as built.
                prepared.url = url
                response = session.send(prepared, timeout=(CONNECT_TIMEOUT_S, timeout),
                                        stream=stream, allow_redirects=False)
                break
            except requests.RequestException as exc:
                # A GET can be asked again; a POST only if it never left (no connection).
                may_replay = idempotent or _never_sent(exc)
                if attempt + 1 < attempts and may_replay and not isinstance(
                        exc, requests.ReadTimeout):
                    log.debug("retrying %s after %s", what, exc)
                    continue
                raise _map_transport_error(exc, what) from exc
        if response.status_code >= 400:
            try:
                body = response.raw.read(MAX_ERROR_BODY) if stream else response.content
            except (requests.RequestException, urllib3.exceptions.HTTPError):
                body = b""
            finally:
                response.close()
            message = f"{what}: {response.status_code} {_error_message(response, body)}"
            routed = contract.SANDBOX_ID_HEADER in endpoint.headers
            if response.status_code in (502, 503) and routed:
                # The router could not reach the sandbox (or is not ready to).
                raise SandboxConnectionError(message)
            if response.status_code == 504:
                raise SandboxTimeoutError(message)
            raise SandboxRequestError(message, status_code=response.status_code, body=body)
        return response

    def _json(self, method: str, path: str, *, timeout: float | None,
              json_body: Mapping[str, Any] | None = None,
              files: Mapping[str, Any] | None = None) -> Any:
        response = self._request(method, path, timeout=timeout, json_body=json_body,
                                 files=files)
        try:
            return response.json()
        except ValueError as exc:
            raise SandboxConnectionError(f"{method} {path}: the answer is not JSON") from exc

    def _run_timeout(self, timeout: Timeout) -> float | None:
        value = self.run_timeout if timeout is DEFAULT else timeout
        if value is not None and not value > 0:
            raise ValueError(f"timeout must be positive or None, not {value!r}")
        return value  # type: ignore[return-value]

    @staticmethod
    def _command_body(command: str, timeout: float | None, env: Mapping[str, str] | None,
                      cwd: str | None) -> dict[str, Any]:
        if not isinstance(command, str):
            raise TypeError(f"command must be a str, not {type(command).__name__}")
        body: dict[str, Any] = {"command": command}
        if timeout is not None:
            body["timeout"] = timeout
        if env:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        return body

    # -- the API ------------------------------------------------------------------------

    def run(self, command: str, *, timeout: Timeout = DEFAULT,
            env: Mapping[str, str] | None = None, cwd: str | None = None) -> ExecutionResult:
        """Run a shell command in the sandbox's workspace and wait for it.

        Args:
            command: run as `/bin/sh -c command`.
            timeout: seconds before the runtime kills the command's whole process tree
                (the result then has `timed_out=True`); default: the client's run_timeout.
            env: extra environment variables; cwd: working directory (in the workspace).

        Returns:
            ExecutionResult(stdout, stderr, exit_code, timed_out, ...). A non-zero exit is
            data, not an exception.

        Raises:
            SandboxRequestError: the runtime refused the command (bad input, busy).
            SandboxTimeoutError: no answer even RUN_GRACE_S after the command's deadline.
            SandboxConnectionError: the runtime could not be reached. Never replayed.
        """
        limit = self._run_timeout(timeout)
        answer = self._json("POST", "/execute",
                            json_body=self._command_body(command, limit, env, cwd),
                            timeout=None if limit is None else limit + RUN_GRACE_S)
        if not isinstance(answer, dict):
            raise SandboxConnectionError("POST /execute: unexpected answer")
        return ExecutionResult(
            stdout=str(answer.get("stdout", "")), stderr=str(answer.get("stderr", "")),
            exit_code=int(answer.get("exit_code", -1)),
            timed_out=bool(answer.get("timed_out", False)),
            stdout_truncated=bool(answer.get("stdout_truncated", False)),
            stderr_truncated=bool(answer.get("stderr_truncated", False)))

    def stream(self, command: str, *, timeout: Timeout = DEFAULT,
               env: Mapping[str, str] | None = None, cwd: str | None = None) -> CommandStream:
        """Start a command and return its output as it comes (see CommandStream)."""
        limit = self._run_timeout(timeout)
        response = self._request("POST", "/execute/stream",
                                 json_body=self._command_body(command, limit, env, cwd),
                                 timeout=None if limit is None else limit + RUN_GRACE_S,
                                 stream=True)
        return CommandStream(response, command)

    def write(self, path: str, content: str | bytes) -> None:
        """Write a file in the workspace (parents are created), replacing it atomically.

        Args:
            path: relative to the workspace, or absolute inside it.
            content: bytes, or str (written as UTF-8).
        """
        if isinstance(content, str):
            data = content.encode("utf-8")
        elif isinstance(content, bytes | bytearray | memoryview):
            data = bytes(content)
        else:
            raise TypeError(f"content must be str or bytes, not {type(content).__name__}")
        if not isinstance(path, str) or not path:
            raise ValueError("path must be a non-empty string")
        self._json("POST", "/upload", timeout=self.request_timeout,
                   files={"file": (path, data, "application/octet-stream")})

    def read(self, path: str) -> bytes:
        """The bytes of a file in the workspace (SandboxRequestError 404 if missing)."""
        response = self._request("GET", "/download/" + _url_path(path),
                                 timeout=self.request_timeout)
        try:
            return response.content
        except requests.RequestException as exc:
            raise _map_transport_error(exc, f"reading {path!r}") from exc

    def list(self, path: str = ".") -> builtins.list[FileEntry]:
        """The entries of a workspace directory, sorted by name (symlinks not followed)."""
        answer = self._json("GET", "/list/" + _url_path(path), timeout=self.request_timeout)
        if not isinstance(answer, list):
            raise SandboxConnectionError("GET /list: unexpected answer")
        return [FileEntry(name=str(e["name"]), type=str(e["type"]), size=int(e["size"]))
                for e in answer]

    def exists(self, path: str) -> bool:
        """Whether a path exists in the workspace."""
        answer = self._json("GET", "/exists/" + _url_path(path), timeout=self.request_timeout)
        return bool(isinstance(answer, dict) and answer.get("exists"))

    def health(self) -> bool:
        """True when the runtime answers GET / with status ok."""
        answer = self._json("GET", "/", timeout=self.request_timeout)
        return isinstance(answer, dict) and answer.get("status") == "ok"
