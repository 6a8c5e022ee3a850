"""SandboxClient: the walkthrough's front door, on Kubernetes or on this machine under gVisor.

Used by agent code as `with SandboxClient(template_name=..., namespace=...) as sandbox:`.
Enter asks a Backend (agentic_sandbox._backends) for a ready sandbox; exit always releases it,
also when entering failed halfway. This module is the IO: httpx's sync client over the
Endpoint's transport. What each call sends, how answers are read, how failures map to our
error tree and when a call may be sent again (the replay rule) live in
agentic_sandbox._protocol (and its _protocol_files, _protocol_processes), without IO, shared
with the async client; agentic_sandbox._base.BaseClient holds the rest that does not depend
on IO (options, backend, state). This module must not know how a backend reaches its sandbox.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx2

from agentic_sandbox._base import DEFAULT, BaseClient, ProcessHandle, State, Timeout
from agentic_sandbox._exceptions import SandboxError
from agentic_sandbox._models import (
    ArchiveSummary,
    ExecutionResult,
    FileEntry,
    FileStat,
    OutputChunk,
    ProcessInfo,
    ProcessOutput,
)
from agentic_sandbox._protocol import (
    MAX_ERROR_BODY,
    Answer,
    Call,
    CommandOutput,
    command_call,
    health_call,
    replay_allowed,
    status_error,
    timeout_of,
    transport_error,
)
from agentic_sandbox._protocol_files import (
    archive_in_call,
    archive_out_call,
    copy_call,
    download_call,
    exists_call,
    list_call,
    mkdir_call,
    move_call,
    remove_call,
    stat_call,
    upload_call,
)
from agentic_sandbox._protocol_processes import (
    kill_call,
    output_call,
    process_call,
    processes_call,
    start_call,
    wait_call,
    wait_slice,
)
from agentic_sandbox._transfer import (
    DirectoryDownload,
    DirectoryUpload,
    FileDownload,
    Progress,
    counting,
)
from sandbox_common import contract

__all__ = ["CommandStream", "Process", "SandboxClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommandStream(CommandOutput):
    """A running command's output, chunk by chunk; then its exit code.

    Iterate to get OutputChunk objects as the runtime sends them; when iteration ends,
    `exit_code`, `timed_out` and `result` are set. Closing it early (or leaving its `with`
    block) hangs up, and the runtime kills the command's process tree.

        with sandbox.stream("make test") as stream:
            for chunk in stream:
                print(chunk.data, end="")
        print(stream.exit_code)
    """

    def __init__(self, response: httpx2.Response, command: str) -> None:
        super().__init__(command)
        self._response = response
        # One iterator: a second loop goes on where the first one left off.
        self._bytes = response.iter_bytes()
        self._closed = False

    def __iter__(self) -> Iterator[OutputChunk]:
        try:
            for data in self._bytes:
                yield from self.feed(data)
                if self.finished:
                    break
            self.end()
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            self.close()
            raise transport_error(exc, f"streaming {self.command!r}") from exc
        except SandboxError:
            self.close()
            raise
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Process(ProcessHandle["SandboxClient"]):
    """A background process in the sandbox (SandboxClient.start), by its id.

    It runs on after the call that started it, until it ends, its own timeout passes,
    kill() ends it, or the sandbox ends. Its output is kept up to the runtime's output cap.

        server = sandbox.start("python -m http.server 8000")
        print(server.output().stdout)
        server.kill()  # its whole process tree
    """

    def info(self) -> ProcessInfo:
        """Its state now."""
        return self.client._call(process_call(self.id, self.client.request_timeout))

    def wait(self, timeout: float | None = None) -> ProcessInfo:
        """Wait until it ends, or `timeout` seconds (None: no limit); its state then (see
        `.running`: still True when the timeout came first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.client._call(wait_call(self.id, wait_slice(deadline, time.monotonic())))
            if not info.running or (deadline is not None and time.monotonic() >= deadline):
                return info

    def output(self) -> ProcessOutput:
        """What it wrote so far (stdout and stderr, each up to the output cap)."""
        return self.client._call(output_call(self.id, self.client.request_timeout))

    def kill(self) -> ProcessInfo:
        """Kill it and every process it started (SIGKILL to its whole tree); its state after
        (exit code 137, signal "SIGKILL", unless it had ended already)."""
        return self.client._call(kill_call(self.id, self.client.request_timeout))


class SandboxClient(BaseClient):
    """A sandbox for the length of a `with` block: run commands and move files in it.

    Args:
        template_name: the SandboxTemplate to make the sandbox from.
        namespace: the Kubernetes namespace of the claim (locally: only recorded).
        backend: "local", "kubernetes", "auto" (the default: see choose_backend) or a
            Backend object.
        sandbox_ready_timeout: seconds to wait for a ready sandbox on enter, and at most for
            one call to get past 503s with Retry-After (a suspended sandbox waking up).
        request_timeout: seconds a file call or health check may take (None: no limit).
        run_timeout: default command timeout for run() and stream() (the runtime kills the
            command's process tree when it passes); None leaves it to the runtime (60 s).
        Kubernetes only (KubernetesOptions): api_url (a gateway or a direct router URL),
            connection ("tunnel", "direct", "in-cluster"; default: direct when api_url is
            given, else in-cluster in a pod unless kubeconfig is given, else tunnel),
            router_token (else $AGENTIC_SANDBOX_ROUTER_TOKEN), kubeconfig, context,
            router_service, router_namespace, router_port, server_port.
        Local only (LocalOptions): templates_dir (folders of SandboxTemplate YAML, else
            $AGENTIC_SANDBOX_TEMPLATES), warm_pool (spare sandboxes kept ready in this
            process), state_dir.
        idle_timeout: put the sandbox to sleep after this long without a request (a
            duration such as "90s", or whole seconds, 2 s to 8760 h), overriding the
            template's `idleTimeout`; the next request wakes it. Kubernetes: the claim's
            `idleTimeout` (suspended); local: paused, and stopped with its workspace kept
            after 10 timeouts (docs/client.md, "Idle local sandboxes").
        attach: the name of a sandbox that already exists and outlives this client (on
            Kubernetes a SandboxClaim, locally one made by `agentic-sandbox create NAME`):
            enter waits for it instead of making one, exit leaves it running.

    Example:
        with SandboxClient(template_name="python-runtime-template") as sandbox:
            print(sandbox.run("echo hello").stdout)
    """

    _http: httpx2.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> SandboxClient:
        """Get a ready sandbox (what `with` does on enter)."""
        with self._state_lock:
            if self._state is State.OPEN:
                return self
            self._check_reopen()
            try:
                endpoint = self._backend.open()
            except BaseException:
                # Release whatever was acquired before the failure (claim, tunnel, runsc).
                self._state = State.CLOSED
                self._backend.close()
                raise
            # No proxies or netrc from the environment, no redirects: one hop, as given.
            self._http = httpx2.Client(base_url=endpoint.base_url, transport=endpoint.transport,
                                       headers=endpoint.headers, trust_env=False)
            self._endpoint = endpoint
            self._state = State.OPEN
            log.debug("sandbox ready: %s", endpoint.description or endpoint.base_url)
            return self

    def close(self) -> None:
        """Release the sandbox; safe to call twice."""
        with self._state_lock:
            if self._state is State.CLOSED and self._http is None:
                return
            self._state = State.CLOSED
            http, self._http = self._http, None
            try:
                if http is not None:
                    http.close()  # and the endpoint's transport with it
            finally:
                self._backend.close()

    def __enter__(self) -> SandboxClient:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the one way to the runtime -------------------------------------------------------

    def _send(self, call: Call[Any]) -> httpx2.Response:
        """Send one call: the endpoint's headers, its timeout, the replay rule, errors. The
        answer is streamed: its body is read (bounded) by the caller."""
        http, endpoint = self._http, self._endpoint
        if self._state is not State.OPEN or http is None or endpoint is None:
            raise self._not_open()
        attempt, started = 0, time.monotonic()
        while True:
            request = http.build_request(call.method, call.path, json=call.json,
                                         files=call.files, content=call.content,
                                         headers=call.headers, timeout=timeout_of(call))
            try:
                response = http.send(request, stream=True)
            except httpx2.HTTPError as exc:
                if not replay_allowed(call, exc, attempt):
                    raise transport_error(exc, call.what) from exc
                log.debug("sending %s again after %r", call.what, exc)
                attempt += 1
                continue
            if (wait := self._resend_wait(call, response, started)) is None:
                break
            response.close()
            log.debug("sending %s again in %.1fs after a 503 (waking up?)", call.what, wait)
            time.sleep(wait)
        if not 200 <= response.status_code < 300:  # a 3xx too: see status_error
            try:
                body = _first_bytes(response)
            except httpx2.HTTPError:
                body = b""
            finally:
                response.close()
            raise status_error(call, response.status_code, response.reason_phrase, body,
                               routed=contract.SANDBOX_ID_HEADER in endpoint.headers)
        return response

    def _call(self, call: Call[T]) -> T:
        answer = Answer(call)
        self._receive(call, answer.feed)
        return answer.result()  # type: ignore[no-any-return]

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
        return self._call(command_call(command, self._run_timeout(timeout), env, cwd))

    def stream(self, command: str, *, timeout: Timeout = DEFAULT,
               env: Mapping[str, str] | None = None, cwd: str | None = None) -> CommandStream:
        """Start a command and return its output as it comes (see CommandStream)."""
        call = command_call(command, self._run_timeout(timeout), env, cwd, stream=True)
        return CommandStream(self._send(call), command)

    def start(self, command: str, *, timeout: float | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None) -> Process:
        """Start a command in the background: it outlives this call (see Process).

        Args:
            command: run as `/bin/sh -c command`, like run().
            timeout: seconds before the runtime kills its whole tree; None: the runtime's
                longest (a day by default). The sandbox's end kills it in any case.
            env, cwd: as for run().

        Raises:
            SandboxRequestError: 429 when the sandbox already runs its limit of background
                processes (16 by default), 400/403/404 for a bad env or cwd.
        """
        info = self._call(start_call(command, timeout, env, cwd, self.request_timeout))
        return Process(self, info.id, info.command)

    def processes(self) -> builtins.list[ProcessInfo]:
        """The sandbox's background processes, running and recently ended, oldest first."""
        return self._call(processes_call(self.request_timeout))

    def process(self, process_id: str) -> Process:
        """The handle of a background process by its id (from processes(), or another
        client of the same sandbox)."""
        return Process(self, process_id)

    def write(self, path: str, content: str | bytes | IO[bytes]) -> None:
        """Write a file in the workspace (parents are created), replacing it atomically.

        Args:
            path: relative to the workspace, or absolute inside it.
            content: bytes, str (written as UTF-8), or a binary file object, streamed
                from its start a piece at a time (any size up to the runtime's upload
                limit, 413 past it).
        """
        self._call(upload_call(path, content, self.request_timeout))

    def upload_file(self, local_path: str | os.PathLike[str], remote_path: str, *,
                    progress: Progress | None = None) -> None:
        """Stream a local file into the workspace (see write); `progress(n)` per piece."""
        with open(local_path, "rb") as file:
            self.write(remote_path, file if progress is None else counting(file, progress))

    def download_file(self, remote_path: str, local_path: str | os.PathLike[str], *,
                      progress: Progress | None = None) -> int:
        """Stream a workspace file to a local file (replaced only once it is whole);
        returns its size."""
        call = download_call(remote_path, self.request_timeout)
        with FileDownload(local_path, progress) as target:
            self._receive(call, target.feed)
            return target.finish()

    def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str, *,
                   progress: Progress | None = None) -> ArchiveSummary:
        """Upload a local directory's tree into a workspace directory (made if missing;
        files there are replaced, others kept), streamed as tar. Symlinks go as links;
        the runtime refuses absolute ones and those leading out of the tree, and on any
        refusal the remote directory stays as it was."""
        body = DirectoryUpload(local_dir, progress)
        return self._call(archive_in_call(remote_dir, body, self.request_timeout))

    def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str], *,
                     progress: Progress | None = None) -> ArchiveSummary:
        """Download a workspace directory's tree into a local directory (made if missing),
        streamed as tar and extracted as it comes, by the runtime's own rules: nothing is
        ever written outside `local_dir`, and a refused stream changes nothing there."""
        call = archive_out_call(remote_dir, self.request_timeout)
        with DirectoryDownload(local_dir, call.what, progress) as target:
            self._receive(call, target.feed)
            return target.finish()

    def _receive(self, call: Call[Any], feed: Any) -> None:
        """Send `call` and hand its answer's bytes to `feed` as they arrive."""
        response = self._send(call)
        try:
            for data in response.iter_bytes():
                feed(data)
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            raise transport_error(exc, call.what) from exc
        finally:
            response.close()

    def stat(self, path: str) -> FileStat:
        """Type, size, permission bits and mtime of a workspace path (symlinks followed,
        inside the workspace only)."""
        return self._call(stat_call(path, self.request_timeout))

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Make a workspace directory; `parents` (the default): like `mkdir -p`."""
        self._call(mkdir_call(path, parents, self.request_timeout))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink (never its target) or, with `recursive`, a directory
        tree (symlinks inside it are removed, never followed). 404 if missing."""
        self._call(remove_call(path, recursive, self.request_timeout))

    def move(self, source: str, destination: str) -> None:
        """Rename a workspace entry (rename(2): a file or link at `destination` is
        replaced; a symlink at `source` moves as itself)."""
        self._call(move_call(source, destination, self.request_timeout))

    def copy(self, source: str, destination: str) -> ArchiveSummary:
        """Copy a workspace file (replacing `destination`) or directory tree (`destination`
        must not exist); symlinks inside a tree are copied as links, never followed."""
        return self._call(copy_call(source, destination, self.request_timeout))

    def read(self, path: str) -> bytes:
        """The bytes of a file in the workspace (SandboxRequestError 404 if missing)."""
        return self._call(download_call(path, self.request_timeout))

    def list(self, path: str = ".") -> builtins.list[FileEntry]:
        """The entries of a workspace directory, sorted by name (symlinks not followed)."""
        return self._call(list_call(path, self.request_timeout))

    def exists(self, path: str) -> bool:
        """Whether a path exists in the workspace."""
        return self._call(exists_call(path, self.request_timeout))

    def health(self) -> bool:
        """True when the runtime answers GET / with status ok."""
        return self._call(health_call(self.request_timeout))


def _first_bytes(response: httpx2.Response) -> bytes:
    """Up to MAX_ERROR_BODY bytes of a streamed answer: an error's body, bounded."""
    body = b""
    for data in response.iter_bytes():
        body += data
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]

