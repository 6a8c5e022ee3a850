"""Named local sandboxes: one detached holder process per name keeps a local gVisor sandbox
between command-line calls and serves its runtime API on a Unix socket.

The local backend's sandbox lives as long as the process that opened it, and a command line
call is one short process. So `agentic-sandbox create NAME` (agentic_sandbox._named.create)
starts `python -m agentic_sandbox._holder` in its own session: it opens a sandbox with the
local backend (isolation, runsc and stale cleanup stay that backend's), listens on a Unix
socket and forwards every HTTP request it gets there, unchanged, to the sandbox's runtime
over the backend's own channel. `SandboxClient(attach=NAME, backend="local")` reaches it
through HeldBackend; `delete NAME` sends it SIGTERM, and it removes the sandbox and its
files. The holder forwards bytes: it must not interpret paths or commands (confinement
stays the runtime's) and must never answer for the sandbox itself.

Files, under the local backend's state folder (mode 0700, hidden inside every sandbox):

    named/<name>/holder.json   holder pid and start time, template, namespace, sandbox id
    named/<name>/runtime.sock  the socket (0600); the holder also checks the peer's uid
    named/<name>.log           the holder's log
    named/.lock                flock taken while a name is reserved or cleaned up

A holder that dies without cleaning up (SIGKILL) leaves a record whose pid is gone: `delete`
removes it, and the local backend removes the runsc sandbox itself the next time any process
starts it (its owner record named the dead holder).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.server
import io
import json
import logging
import os
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import requests
import urllib3.exceptions

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.local import BASE_URL, ChannelAdapter, _default_state_dir
from agentic_sandbox._client import CONNECT_TIMEOUT_S, SandboxClient
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    ClaimFailedError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from agentic_sandbox._named import validate_name
from sandbox_common import contract

__all__ = ["HeldBackend", "main", "named_dir", "spawn", "stop"]

log = logging.getLogger(__name__)

NAMED: Final = "named"
RECORD: Final = "holder.json"
SOCKET: Final = "runtime.sock"
CHUNK: Final = 64 * 1024
# Ready answer from a holder: the sandbox's start-up plus this much for the holder's own.
SPAWN_GRACE_S: Final = 30.0
STOP_TIMEOUT_S: Final = 60.0
# Headers that belong to one hop (RFC 9110 section 7.6.1), and the ones we set ourselves.
HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-authenticate",
                               "proxy-authorization", "te", "trailer", "transfer-encoding",
                               "upgrade", "host", "content-length"})


# -- records -----------------------------------------------------------------------------------


def _state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    """The local backend's state folder, resolved as the local backend resolves it."""
    return (Path(state_dir) if state_dir is not None else _default_state_dir()).expanduser() \
        .resolve()


def named_dir(state_dir: str | os.PathLike[str] | None, name: str) -> Path:
    return _state_dir(state_dir) / NAMED / validate_name(name)


def read_record(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _process_state(pid: Any) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc/<pid>/stat (fields 3 and 22), or None.

    With the pid, the start time identifies a process for good: a reused pid has another.
    """
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, TypeError, ValueError, IndexError):
        return None


def _listed(record: dict[str, Any]) -> str | None:
    """The state of the record's process while /proc still lists it (a zombie too)."""
    found = _process_state(record.get("pid"))
    return found[0] if found is not None and found[1] == record.get("start") else None


def holder_running(record: dict[str, Any]) -> bool:
    """Whether the record's holder still runs: same pid and start time, and not a zombie."""
    return _listed(record) not in (None, "Z")


def _own_record(**fields: Any) -> dict[str, Any]:
    found = _process_state(os.getpid())
    return {"pid": os.getpid(), "start": found[1] if found else None, **fields}


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_record(directory: Path, record: dict[str, Any]) -> None:
    tmp = directory / (RECORD + ".new")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, directory / RECORD)


def _reserve(root: Path, name: str, record: dict[str, Any]) -> Path:
    """Claim the name: its folder appears at once with a complete record in it."""
    final = root / name
    with _locked(root):
        existing = read_record(final)
        if final.exists():
            if existing is not None and holder_running(existing):
                raise ClaimFailedError(f"a local sandbox named {name!r} already exists",
                                       reason="AlreadyExists", claim=name)
            shutil.rmtree(final, ignore_errors=True)  # its holder is gone
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
        _write_record(staging, record)
        os.rename(staging, final)
    return final


def _remove(directory: Path) -> None:
    with _locked(directory.parent):
        shutil.rmtree(directory, ignore_errors=True)


# -- the holder process ------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM or SIGINT reached the holder: remove the sandbox and exit."""


class _BodyReader:
    """A request body of known length, read from the client as the runtime takes it."""

    def __init__(self, stream: io.BufferedIOBase, length: int) -> None:
        self.stream = stream
        self.remaining = length
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.stream.read(size)
        self.remaining -= len(data)
        return data


def _dechunk(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """A chunked request body (RFC 9112 section 7.1), chunk by chunk."""
    while True:
        line = stream.readline(1024)
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields: none matter here
            return
        data = stream.read(size)
        stream.readline(3)
        if len(data) != size:
            raise ValueError("the chunked request body ended early")
        yield data


class _HangupWatch:
    """Closes the runtime's side when the client hangs up while its answer is under way.

    The runtime kills a command whose channel closes; through the holder the client's
    hang-up would otherwise only be noticed at the next write, which a silent command never
    makes. A client that sends more bytes instead is not hanging up: watching stops.
    """

    def __init__(self, client: socket.socket, upstream: Any) -> None:
        self.client = client
        self.upstream = upstream
        self._wake_read, self._wake_write = os.pipe()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _HangupWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.write(self._wake_write, b"x")
        self.thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        poller.register(self.client, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready:
                return
            try:
                hung_up = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                continue
            except OSError:
                hung_up = True
            if hung_up:
                with contextlib.suppress(Exception):
                    self.upstream.shutdown()
            return


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the sandbox's runtime, as they are."""

    protocol_version = "HTTP/1.1"
    server: _HolderServer

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.command, *args)

    def _answer_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    def _body(self) -> tuple[Any, int | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _dechunk(self.rfile), None
        length = self.headers.get("Content-Length")
        if length is None:
            return None, None
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return _BodyReader(self.rfile, size), size

    def _forward(self) -> None:
        endpoint = self.server.endpoint
        try:
            body, length = self._body()
        except ValueError as exc:
            self._answer_error(400, f"bad request framing: {exc}")
            return
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() not in HOP_BY_HOP}
        headers.update(endpoint.headers)
        if length is not None:
            headers["Content-Length"] = str(length)
        url = endpoint.base_url + self.path
        session = self.server.session
        prepared = session.prepare_request(requests.Request(self.command, url, headers=headers,
                                                            data=body))
        prepared.url = url  # requests would re-quote the path (%2E back to "."), as in _client
        try:
            upstream = session.send(prepared, stream=True, allow_redirects=False,
                                    timeout=(CONNECT_TIMEOUT_S, None))
        except (requests.RequestException, ValueError) as exc:
            self._answer_error(502, f"the sandbox's runtime did not answer: {exc}")
            return
        if isinstance(body, _BodyReader) and body.remaining:
            self.close_connection = True  # the runtime answered before reading it all
        with upstream, _HangupWatch(self.connection, upstream.raw):
            self._relay(upstream)

    def _relay(self, upstream: requests.Response) -> None:
        length = upstream.headers.get("Content-Length")
        try:
            self.send_response_only(upstream.status_code, upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", length)
            self.end_headers()
            # Each piece goes on as it comes: a streamed command's output is not held back.
            for data in upstream.raw.stream(CHUNK, decode_content=False):
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if length is None
                                     else data)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            # The client hung up (its command is killed as the runtime's channel closes),
            # or the runtime did: either way this connection cannot carry on.
            log.debug("relay ended: %s", exc)
            self.close_connection = True


class _HolderServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The holder's Unix socket server; one thread per client connection."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, directory: Path, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.mount(endpoint.base_url + "/", endpoint.adapter)
        # A socket path may hold 107 bytes; state folders can be longer: bind through the
        # folder's descriptor instead.
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        address = f"/proc/self/fd/{self._dir_fd}/{SOCKET}"
        super().__init__(address, _ProxyHandler)
        os.chmod(address, 0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Only this user may talk to the sandbox (the folder is 0700 already)."""
        creds = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return bool(uid == os.geteuid())

    def server_close(self) -> None:
        super().server_close()
        self.session.close()
        os.close(self._dir_fd)


def _report(ready: IO[str], answer: dict[str, Any]) -> bool:
    """Tell the creator how the start went; False if it is no longer there to hear it."""
    try:
        ready.write(json.dumps(answer) + "\n")
        ready.flush()
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            ready.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # one clean shutdown, not a second one inside it
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """The holder process: reserve the name, open the sandbox, serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m agentic_sandbox._holder")
    parser.add_argument("name")
    parser.add_argument("--template", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--state-dir")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = os.fdopen(args.ready_fd if args.ready_fd is not None else os.dup(2), "w")
    answer: dict[str, Any] = {"ok": False, "error": "stopped before the sandbox was ready",
                              "type": "SandboxError"}
    state = _state_dir(args.state_dir)
    directory: Path | None = None
    backend = None
    server: _HolderServer | None = None
    serving = False
    status = 1
    try:
        record = _own_record(template=args.template, namespace=args.namespace, sandbox=None)
        directory = _reserve(state / NAMED, validate_name(args.name), record)
        # warm_pool=0: a spare sandbox in a holder would serve nobody.
        client = SandboxClient(args.template, args.namespace, backend="local", warm_pool=0,
                               state_dir=state, sandbox_ready_timeout=args.ready_timeout)
        backend = client.backend
        endpoint = backend.open()
        server = _HolderServer(directory, endpoint)
        _write_record(directory, record | {"sandbox": endpoint.sandbox_name})
        threading.Thread(target=server.serve_forever, name="holder-serve", daemon=True).start()
        serving = True
        log.info("holding local sandbox %s as %r", endpoint.sandbox_name, args.name)
        answer = {"ok": True, "sandbox": endpoint.sandbox_name}
        if _report(ready, answer):
            while True:
                signal.pause()
        # The creator is gone: a create nobody saw succeed is a failed create.
    except _Stop:
        status = 0
    except Exception as exc:
        if not isinstance(exc, SandboxError | ValueError):
            log.exception("the holder failed")
        answer = {"ok": False, "error": str(exc), "type": type(exc).__name__,
                  "reason": getattr(exc, "reason", "")}
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if not answer["ok"]:
            _report(ready, answer)
        if server is not None:
            if serving:
                server.shutdown()
            server.server_close()
        if backend is not None:
            backend.close()
        if directory is not None:
            _remove(directory)
            if status == 0:
                with contextlib.suppress(OSError):
                    (state / NAMED / f"{args.name}.log").unlink()
    return status


# -- the command line's side -------------------------------------------------------------------


def _read_answer(fd: int, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The holder's one-line answer on the ready pipe; {} if it ended without one."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxTimeoutError(f"the sandbox was not ready within {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if readable:
            piece = os.read(fd, 4096)
            if not piece:
                break
            data += piece
    try:
        answer = json.loads(data.split(b"\n", 1)[0] or b"{}")
    except ValueError:
        answer = {}
    return answer if isinstance(answer, dict) else {}


def _error_from(answer: dict[str, Any], name: str, fallback: str) -> SandboxError:
    """The error the holder reported, as the class it named (SandboxError for others)."""
    message = str(answer.get("error") or fallback)
    kind = str(answer.get("type"))
    for claim_error in (TemplateNotFoundError, ClaimFailedError):
        if kind == claim_error.__name__:
            return claim_error(message, reason=str(answer.get("reason") or ""), claim=name)
    for error in (BackendUnavailableError, SandboxConnectionError, SandboxTimeoutError):
        if kind == error.__name__:
            return error(message)
    return SandboxError(message)


def spawn(name: str, *, template: str, namespace: str = "default",
          state_dir: str | os.PathLike[str] | None = None,
          ready_timeout: float = 180.0) -> str:
    """Start a holder for `name` and wait until its sandbox is ready; returns the sandbox id."""
    directory = named_dir(state_dir, name)
    root = directory.parent
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = read_record(directory)
    if existing is not None and holder_running(existing):
        raise ClaimFailedError(f"a local sandbox named {name!r} already exists",
                               reason="AlreadyExists", claim=name)
    log_path = root / f"{name}.log"
    argv = [sys.executable, "-m", "agentic_sandbox._holder", name, "--template", template,
            "--namespace", namespace, "--state-dir", str(root.parent),
            "--ready-timeout", str(ready_timeout)]
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [*argv, "--ready-fd", str(write_end)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log_file, pass_fds=(write_end,), cwd="/",
                start_new_session=True)  # a Ctrl-C in this terminal must not reach it later
        os.close(write_end)
        write_end = -1
        try:
            answer = _read_answer(read_end, process, ready_timeout + SPAWN_GRACE_S)
        except BaseException:
            process.terminate()  # interrupted or too slow: it removes what it made
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
            raise
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer.get("ok"):
        return str(answer.get("sandbox", ""))
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT_S)
    tail = ""
    with contextlib.suppress(OSError):
        tail = log_path.read_bytes()[-800:].decode("utf-8", "replace").strip()
        log_path.unlink()
    raise _error_from(answer, name, f"the sandbox holder exited ({process.returncode}) before its "
                              f"sandbox was ready: {tail}")


def stop(name: str, *, state_dir: str | os.PathLike[str] | None = None,
         timeout: float = STOP_TIMEOUT_S) -> None:
    """Delete the named sandbox: SIGTERM its holder and wait; clean up after a dead one."""
    directory = named_dir(state_dir, name)
    record = read_record(directory)
    if record is None:
        raise ClaimFailedError(f"no local sandbox named {name!r}", reason="NotFound",
                               claim=name)
    if holder_running(record):
        os.kill(int(record["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while holder_running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        if holder_running(record):
            log.warning("holder of %r did not stop in %.0f s; killing it", name, timeout)
            os.kill(int(record["pid"]), signal.SIGKILL)
            while holder_running(record):
                time.sleep(0.05)
    if directory.exists():
        # The holder died without cleaning up: the local backend removes sandboxes whose
        # owner is gone when its manager starts, which this does. It tells a gone owner by
        # its /proc entry, which a dead holder keeps until init reaps it.
        deadline = time.monotonic() + timeout
        while _listed(record) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        from agentic_sandbox._backends import local
        local.manager(directory.parent.parent)
        _remove(directory)
    with contextlib.suppress(OSError):
        (directory.parent / f"{name}.log").unlink()


# -- SandboxClient(attach=NAME) on the local backend -------------------------------------------


class HeldBackend:
    """Backend that reaches a named local sandbox through its holder's socket.

    open() checks the holder runs and returns an Endpoint over its socket; close() releases
    nothing: the sandbox belongs to its name until `agentic-sandbox delete NAME`.
    """

    name = "local"

    def __init__(self, name: str, *, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.sandbox = validate_name(name)
        self.directory = named_dir(state_dir, name)

    def _connect(self) -> socket.socket:
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxConnectionError(f"local sandbox {self.sandbox!r} was deleted") \
                from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET}")
        except OSError as exc:
            sock.close()
            raise SandboxConnectionError(
                f"local sandbox {self.sandbox!r}: its holder does not answer "
                f"({exc.strerror or exc})") from exc
        finally:
            os.close(dir_fd)
        return sock

    def open(self) -> Endpoint:
        record = read_record(self.directory)
        if record is None:
            raise ClaimFailedError(
                f"no local sandbox named {self.sandbox!r} (make one with `agentic-sandbox "
                f"create {self.sandbox}`)", reason="NotFound", claim=self.sandbox)
        if not holder_running(record):
            raise ClaimFailedError(
                f"local sandbox {self.sandbox!r} is gone: its holder process "
                f"{record.get('pid')} ended; `agentic-sandbox delete {self.sandbox}` removes "
                "what is left", reason="HolderGone", claim=self.sandbox)
        if not record.get("sandbox"):
            raise SandboxConnectionError(f"local sandbox {self.sandbox!r} is still starting")
        return Endpoint(base_url=BASE_URL, adapter=ChannelAdapter(self._connect),
                        headers={contract.SANDBOX_ID_HEADER: self.sandbox},
                        sandbox_name=self.sandbox,
                        description=f"named local sandbox {self.sandbox} "
                                    f"(holder pid {record.get('pid')})")

    def close(self) -> None:
        """Nothing to release: the client's session closes the adapter."""


if __name__ == "__main__":
    sys.exit(main())
