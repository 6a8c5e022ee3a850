"""AsyncSandboxClient: SandboxClient's API for asyncio, on Kubernetes or on this machine.

Used by agent code as `async with AsyncSandboxClient(template_name=...) as sandbox:`. IO
only, like agentic_sandbox._client: httpx's AsyncClient over the Endpoint's async transport.
What each call sends, how its answer is read, the replay and 503-resend rules and the error
mapping are agentic_sandbox._protocol's (and _protocol_files', _protocol_processes'), shared
with SandboxClient; options, backend and state are agentic_sandbox._base.BaseClient's. A
backend's open() and close() block (runsc, the Kubernetes API) and run in a thread of their
own (agentic_sandbox._aio); local files are read and written off the event loop
(agentic_sandbox._transfer). It must not know how a backend reaches its sandbox.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx2

from agentic_sandbox._aio import in_thread, off_loop
from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._base import DEFAULT, BaseClient, ProcessHandle, State, Timeout
from agentic_sandbox._exceptions import BackendUnavailableError, SandboxError
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
    AsyncBody,
    DirectoryDownload,
    DirectoryUpload,
    FileDownload,
    Progress,
    counting,
    write_off_loop,
)
from sandbox_common import contract

__all__ = ["AsyncCommandStream", "AsyncProcess", "AsyncSandboxClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_releasing: set[asyncio.Future[None]] = set()  # backends being closed after a failed open


class AsyncCommandStream(CommandOutput):
    """A running command's output for `async for`; then its exit code (as CommandStream).

    The command starts when the stream is entered, awaited or first iterated; leaving its
    `async with` block (or `aclose()`) early hangs up, and the runtime kills the command's
    process tree.

        async with sandbox.stream("make test") as stream:
            async for chunk in stream:
                print(chunk.data, end="")
        print(stream.exit_code)
    """

    def __init__(self, client: AsyncSandboxClient, call: Call[ExecutionResult],
                 command: str) -> None:
        super().__init__(command)
        self._client = client
        self._call = call
        self._response: httpx2.Response | None = None
        self._bytes: AsyncIterator[bytes] | None = None
        self._closed = False

    async def _start(self) -> AsyncIterator[bytes]:
        if self._bytes is None:
            if self._closed:
                raise RuntimeError("this stream was closed")
            self._response = await self._client._send(self._call)
            # One iterator: a second loop goes on where the first one left off.
            self._bytes = self._response.aiter_bytes()
        return self._bytes

    def __await__(self) -> Generator[Any, None, AsyncCommandStream]:
        async def started() -> AsyncCommandStream:
            await self._start()
            return self
        return started().__await__()

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        data_in = await self._start()
        try:
            async for data in data_in:
                for chunk in self.feed(data):
                    yield chunk
                if self.finished:
                    break
            self.end()
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            await self.aclose()
            raise transport_error(exc, f"streaming {self.command!r}") from exc
        except SandboxError:
            await self.aclose()
            raise
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._response is not None:
                await self._response.aclose()

    async def __aenter__(self) -> AsyncCommandStream:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncProcess(ProcessHandle["AsyncSandboxClient"]):
    """A background process in the sandbox (AsyncSandboxClient.start): Process, awaited."""

    async def info(self) -> ProcessInfo:
        """Its state now."""
        return await self.client._call(process_call(self.id, self.client.request_timeout))

    async def wait(self, timeout: float | None = None) -> ProcessInfo:
        """Wait until it ends, or `timeout` seconds (None: no limit); its state then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.client._call(
                wait_call(self.id, wait_slice(deadline, time.monotonic())))
            if not info.running or (deadline is not None and time.monotonic() >= deadline):
                return info

    async def output(self) -> ProcessOutput:
        """What it wrote so far (stdout and stderr, each up to the output cap)."""
        return await self.client._call(output_call(self.id, self.client.request_timeout))

    async def kill(self) -> ProcessInfo:
        """Kill it and every process it started; its state after."""
        return await self.client._call(kill_call(self.id, self.client.request_timeout))


class AsyncSandboxClient(BaseClient):
    """SandboxClient for asyncio: the same arguments, the same methods, awaited.

        async with AsyncSandboxClient(template_name="python-runtime-template") as sandbox:
            print((await sandbox.run("echo hello")).stdout)

    Many clients may share one event loop (each has its own sandbox and connections); one
    client may run several calls at once (each waits for its own answer; on the local
    backend a second concurrent call gets a channel of its own). See SandboxClient for the
    arguments.
    """

    _http: httpx2.AsyncClient | None = None
    _lock: asyncio.Lock | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def _state_guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def open(self) -> AsyncSandboxClient:
        """Get a ready sandbox (what `async with` does on enter)."""
        async with self._state_guard():
            if self._state is State.OPEN:
                return self
            self._check_reopen()
            opening = asyncio.ensure_future(in_thread(self._backend.open))
            try:
                # Shielded: a cancelled open() must still learn when the backend's open()
                # ends, to release what it acquired (claim, runsc) rather than leak it.
                endpoint = await asyncio.shield(opening)
                if endpoint.async_transport is None:
                    raise BackendUnavailableError(
                        f"the {self._backend.name!r} backend has no async transport; use "
                        "SandboxClient")
            except BaseException:
                self._state = State.CLOSED
                if opening.done():
                    await asyncio.shield(in_thread(self._releaser(opening)))
                else:
                    opening.add_done_callback(self._release_after_open)
                raise
            self._http = httpx2.AsyncClient(
                base_url=endpoint.base_url, transport=endpoint.async_transport,
                headers=endpoint.headers, trust_env=False)
            self._endpoint = endpoint
            self._state = State.OPEN
            log.debug("sandbox ready: %s", endpoint.description or endpoint.base_url)
            return self

    def _releaser(self, opening: asyncio.Future[Endpoint]) -> Callable[[], None]:
        """What releases a failed or cancelled open(), once the backend's open() ended:
        close the backend, and the endpoint's transports if it got that far."""
        endpoint = None if opening.cancelled() or opening.exception() is not None \
            else opening.result()

        def release() -> None:
            try:
                if endpoint is not None:
                    endpoint.transport.close()  # the async one never made a connection
            finally:
                self._backend.close()
        return release

    def _release_after_open(self, opening: asyncio.Future[Endpoint]) -> None:
        """After a cancelled open(): release in a thread (close() blocks) once the
        backend's open() ended."""
        task = asyncio.ensure_future(in_thread(self._releaser(opening)))
        _releasing.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(_releasing.discard)

    async def close(self) -> None:
        """Release the sandbox; safe to call twice."""
        async with self._state_guard():
            if self._state is State.CLOSED and self._http is None:
                return
            self._state = State.CLOSED
            http, self._http = self._http, None
            endpoint = self._endpoint
            try:
                if http is not None:
                    await http.aclose()  # and the endpoint's async transport with it
            finally:
                def release() -> None:
                    try:
                        if endpoint is not None:
                            endpoint.transport.close()  # the sync one, never used here
                    finally:
                        self._backend.close()
                await asyncio.shield(in_thread(release))

    async def __aenter__(self) -> AsyncSandboxClient:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- the one way to the runtime -------------------------------------------------------

    async def _send(self, call: Call[Any]) -> httpx2.Response:
        """Send one call: as SandboxClient._send, awaited."""
        http, endpoint = self._http, self._endpoint
        if self._state is not State.OPEN or http is None or endpoint is None:
            raise self._not_open()
        attempt, started = 0, time.monotonic()
        while True:
            content = call.content
            if content is not None and not isinstance(content, bytes):
                content = AsyncBody(content)  # a tree's tar stream, read off the loop
            request = http.build_request(call.method, call.path, json=call.json,
                                         files=call.files, content=content,
                                         headers=call.headers, timeout=timeout_of(call))
            try:
                response = await http.send(request, stream=True)
            except httpx2.HTTPError as exc:
                if not replay_allowed(call, exc, attempt):
                    raise transport_error(exc, call.what) from exc
                log.debug("sending %s again after %r", call.what, exc)
                attempt += 1
                continue
            if (wait := self._resend_wait(call, response, started)) is None:
                break
            await response.aclose()
            log.debug("sending %s again in %.1fs after a 503 (waking up?)", call.what, wait)
            await asyncio.sleep(wait)
        if not 200 <= response.status_code < 300:  # a 3xx too: see status_error
            try:
                body = await _first_bytes(response)
            except httpx2.HTTPError:
                body = b""
            finally:
                await response.aclose()
            raise status_error(call, response.status_code, response.reason_phrase, body,
                               routed=contract.SANDBOX_ID_HEADER in endpoint.headers)
        return response

    async def _call(self, call: Call[T]) -> T:
        answer = Answer(call)
        await self._receive(call, answer.afeed)
        return answer.result()  # type: ignore[no-any-return]

    # -- the API (SandboxClient's, awaited) -----------------------------------------------

    async def run(self, command: str, *, timeout: Timeout = DEFAULT,
                  env: Mapping[str, str] | None = None,
                  cwd: str | None = None) -> ExecutionResult:
        """Run a shell command in the sandbox's workspace and wait for it (SandboxClient.run)."""
        return await self._call(command_call(command, self._run_timeout(timeout), env, cwd))

    def stream(self, command: str, *, timeout: Timeout = DEFAULT,
               env: Mapping[str, str] | None = None,
               cwd: str | None = None) -> AsyncCommandStream:
        """A command's output as it comes: `async with sandbox.stream(cmd) as s: async for
        chunk in s` (AsyncCommandStream); the command starts on enter."""
        call = command_call(command, self._run_timeout(timeout), env, cwd, stream=True)
        return AsyncCommandStream(self, call, command)

    async def start(self, command: str, *, timeout: float | None = None,
                    env: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> AsyncProcess:
        """Start a command in the background (SandboxClient.start)."""
        info = await self._call(start_call(command, timeout, env, cwd, self.request_timeout))
        return AsyncProcess(self, info.id, info.command)

    async def processes(self) -> builtins.list[ProcessInfo]:
        """The sandbox's background processes, running and recently ended, oldest first."""
        return await self._call(processes_call(self.request_timeout))

    def process(self, process_id: str) -> AsyncProcess:
        """The handle of a background process by its id."""
        return AsyncProcess(self, process_id)

    async def write(self, path: str, content: str | bytes | IO[bytes]) -> None:
        """Write a workspace file, atomically (SandboxClient.write; a file object streams)."""
        await self._call(upload_call(path, content, self.request_timeout))

    async def upload_file(self, local_path: str | os.PathLike[str], remote_path: str, *,
                          progress: Progress | None = None) -> None:
        """Stream a local file into the workspace (SandboxClient.upload_file), read off the loop."""
        file: IO[bytes] = await off_loop(open, local_path, "rb")
        try:
            await self.write(remote_path,
                             file if progress is None else counting(file, progress))
        finally:
            await off_loop(file.close)

    async def download_file(self, remote_path: str, local_path: str | os.PathLike[str], *,
                            progress: Progress | None = None) -> int:
        """Stream a workspace file to a local file (SandboxClient.download_file), off the loop."""
        call = download_call(remote_path, self.request_timeout)
        return await write_off_loop(lambda: FileDownload(local_path),
                                    lambda feed: self._receive(call, feed), progress)

    async def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str, *,
                         progress: Progress | None = None) -> ArchiveSummary:
        """Upload a local directory's tree as a tar stream (SandboxClient.upload_dir)."""
        body = DirectoryUpload(local_dir, progress)
        return await self._call(archive_in_call(remote_dir, body, self.request_timeout))

    async def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str], *,
                           progress: Progress | None = None) -> ArchiveSummary:
        """Download a workspace directory's tree (SandboxClient.download_dir)."""
        call = archive_out_call(remote_dir, self.request_timeout)
        return await write_off_loop(lambda: DirectoryDownload(local_dir, call.what),
                                    lambda feed: self._receive(call, feed), progress)

    async def _receive(self, call: Call[Any], feed: Callable[[bytes], Awaitable[None]]) -> None:
        """Send `call` and hand its answer's bytes to `feed` as they arrive."""
        response = await self._send(call)
        try:
            async for data in response.aiter_bytes():
                await feed(data)
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            raise transport_error(exc, call.what) from exc
        finally:
            await response.aclose()

    async def stat(self, path: str) -> FileStat:
        """Type, size, permission bits and mtime of a workspace path (SandboxClient.stat)."""
        return await self._call(stat_call(path, self.request_timeout))

    async def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Make a workspace directory; `parents`: like `mkdir -p`."""
        await self._call(mkdir_call(path, parents, self.request_timeout))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink or (recursive) a tree (SandboxClient.remove)."""
        await self._call(remove_call(path, recursive, self.request_timeout))

    async def move(self, source: str, destination: str) -> None:
        """Rename a workspace entry (SandboxClient.move)."""
        await self._call(move_call(source, destination, self.request_timeout))

    async def copy(self, source: str, destination: str) -> ArchiveSummary:
        """Copy a workspace file or tree (SandboxClient.copy)."""
        return await self._call(copy_call(source, destination, self.request_timeout))

    async def read(self, path: str) -> bytes:
        """The bytes of a file in the workspace (SandboxRequestError 404 if missing)."""
        return await self._call(download_call(path, self.request_timeout))

    async def list(self, path: str = ".") -> builtins.list[FileEntry]:
        """The entries of a workspace directory, sorted by name (symlinks not followed)."""
        return await self._call(list_call(path, self.request_timeout))

    async def exists(self, path: str) -> bool:
        """Whether a path exists in the workspace."""
        return await self._call(exists_call(path, self.request_timeout))

    async def health(self) -> bool:
        """True when the runtime answers GET / with status ok."""
        return await self._call(health_call(self.request_timeout))


async def _first_bytes(response: httpx2.Response) -> bytes:
    """Up to MAX_ERROR_BODY bytes of an answer: an error's body, bounded."""
    body = b""
    async for data in response.aiter_bytes():
        body += data
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]
