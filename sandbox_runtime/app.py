"""The runtime's Flask app: create_app(config) and its route table.

Served by gunicorn (`sandbox-runtime --port N`, see __main__.py) or over stdin/stdout
(`sandbox-runtime --stdio`, see stdio.py). Views only parse, validate and shape JSON; the work
is in execute.py and files.py. Every error answers `{"error": "<message>"}` with its status
and never a stack trace. No module-level app: the environment is read when the factory runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import PathConverter
from werkzeug.wsgi import wrap_file

from sandbox_runtime import config as config_mod
from sandbox_runtime import files, procs, slots
from sandbox_runtime.execute import Client, Command, Limits, StreamDecoder, choose_limits

log = logging.getLogger("sandbox_runtime")

EXECUTE_FIELDS = {"command", "timeout", "env", "cwd"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV_VALUE = 128 * 1024
JSON = "application/json"
NDJSON = "application/x-ndjson"
DOWNLOAD_CHUNK = 1024 * 1024
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STDIO_CLIENT = "sandbox_runtime.client_socket"  # = stdio.CLIENT_KEY (stdio imports us)


class AnyPath(PathConverter):
    """Like `path`, but also takes a leading slash, so absolute paths reach resolve()."""

    regex = ".*"
    part_isolating = False  # may span slashes (werkzeug infers True from a regex without "/")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype=JSON)


def multiprocess_dir() -> str | None:
    """The directory where every worker's metric values live, when the server runs several
    workers (__main__.py sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is loaded)."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and values.ValueClass is not values.MutexValue else None


class Metrics:
    """The app's own registry, so two apps in one process (tests) never collide.

    With several workers, each writes its values to files in `multiprocess_dir()` and
    GET /metrics sums them over all workers (dead ones included for counters), so the
    figures are the pod's, whichever worker answers.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        self.commands = Counter("sandbox_runtime_commands_total",
                                "Commands finished, by outcome", ["outcome"],
                                registry=self.registry)
        self.duration = Histogram("sandbox_runtime_command_duration_seconds",
                                  "Wall time of commands", registry=self.registry,
                                  buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600))
        self.running = Gauge("sandbox_runtime_commands_running", "Commands running now",
                             registry=self.registry, multiprocess_mode="livesum")
        self.rejected = Counter("sandbox_runtime_commands_rejected_total",
                                "Commands refused because the concurrency bound was reached",
                                registry=self.registry)
        self.killed = Counter("sandbox_runtime_processes_killed_total",
                              "Processes killed when commands timed out or were abandoned",
                              registry=self.registry)
        self.truncated = Counter("sandbox_runtime_output_truncated_total",
                                 "Streams cut at the output cap", ["stream"],
                                 registry=self.registry)
        self.uploaded = Counter("sandbox_runtime_upload_bytes_total", "Bytes uploaded",
                                registry=self.registry)
        self.downloaded = Counter("sandbox_runtime_download_bytes_total",
                                  "Bytes offered for download", registry=self.registry)
        self.errors = Counter("sandbox_runtime_http_errors_total", "Error answers, by status",
                              ["status"], registry=self.registry)

    def exposition(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry)


class Runtime:
    """What the views share: settings, the command slots, the rlimit mechanism, metrics."""

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        # Shared by every gunicorn worker forked from the process that made it.
        self.slots = slots.make(cfg.max_concurrent_commands)
        self.limits: Limits = choose_limits(cfg)
        self.metrics = Metrics()
        # Commands see the pod's environment, minus the server's own settings.
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(config_mod.ENV_PREFIX) and k != MULTIPROC_ENV}
        self._owner_pid = -1
        self._lock = threading.Lock()

    def prepare_process(self) -> None:
        """Per-process set-up (after gunicorn's fork): subreaper and reaper thread."""
        if self._owner_pid == os.getpid():
            return
        with self._lock:
            if self._owner_pid != os.getpid():
                if self.cfg.subreaper and procs.become_subreaper():
                    procs.start_reaper()
                self._owner_pid = os.getpid()

    def record(self, command: Command) -> None:
        out = command.outcome
        m = self.metrics
        m.commands.labels("timeout" if out.timed_out else "exit").inc()
        m.duration.observe(out.duration_s)
        if out.killed:
            m.killed.inc(out.killed)
        for name in ("stdout", "stderr"):
            if getattr(out, f"{name}_truncated"):
                m.truncated.labels(name).inc()
        if out.timed_out or out.killed or out.stdout_truncated or out.stderr_truncated:
            log.info("command %s", json.dumps({
                "id": command.id, "exit_code": out.exit_code, "timed_out": out.timed_out,
                "killed": out.killed, "duration_s": round(out.duration_s, 3),
                "stdout_truncated": out.stdout_truncated,
                "stderr_truncated": out.stderr_truncated}))


def _read_json_body(limit: int) -> dict[str, Any]:
    return read_json(request.stream, request.content_length, limit)


def read_json(stream: Any, length: int | None, limit: int) -> dict[str, Any]:
    """A JSON object body of at most `limit` bytes from `stream` (`length` bytes if known)."""
    if length is not None and length > limit:
        raise RequestEntityTooLarge(f"body: larger than {limit} bytes")
    # Read in bounded pieces: RawIOBase.read(n) allocates n bytes up front.
    parts: list[bytes] = []
    size = 0
    want = length if length is not None else 65536
    while True:
        part = stream.read(max(1, min(want - size if length else 65536, limit + 1 - size)))
        if not part:
            break
        parts.append(part)
        size += len(part)
        if size > limit:
            raise RequestEntityTooLarge(f"body: larger than {limit} bytes")
        if length is not None and size >= length:
            break
    raw = b"".join(parts)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the stack: bad input
        raise BadRequest("body: expected a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    return body


def parse_execute(body: Mapping[str, Any], rt: Runtime) -> tuple[str, float, dict[str, str], str]:
    """Validate an /execute body; every message names the field at fault."""
    cfg = rt.cfg
    unknown = sorted(set(body) - EXECUTE_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(EXECUTE_FIELDS))}")
    command = body.get("command")
    if not isinstance(command, str):
        raise BadRequest("command: required, must be a string")
    if "\0" in command or len(command.encode()) > cfg.max_command_bytes:
        raise BadRequest(f"command: must hold no NUL and at most {cfg.max_command_bytes} bytes")
    timeout = body.get("timeout", cfg.default_timeout_s)
    if timeout is None:
        timeout = cfg.default_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise BadRequest("timeout: must be a number of seconds")
    if not 0 < timeout <= cfg.max_timeout_s:
        raise BadRequest(f"timeout: must be > 0 and at most {cfg.max_timeout_s} seconds")
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("env: must be an object of string to string")
    if len(env) > cfg.max_env_entries:
        raise BadRequest(f"env: at most {cfg.max_env_entries} entries")
    for key, value in env.items():
        if not ENV_NAME.match(key) or key == procs.MARKER_ENV:
            raise BadRequest(f"env: invalid variable name {key[:100]!r}")
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_ENV_VALUE:
            raise BadRequest(f"env: value of {key!r} must be a string without NUL, "
                             f"at most {MAX_ENV_VALUE} characters")
    cwd_arg = body.get("cwd")
    if cwd_arg is None:
        cwd = cfg.base_dir
    elif not isinstance(cwd_arg, str):
        raise BadRequest("cwd: must be a path string")
    else:
        cwd = files.resolve(cfg.base_dir, cwd_arg, what="cwd")
        if not os.path.exists(cwd):
            raise NotFound(f"cwd: {cwd_arg!r} does not exist")
        if not os.path.isdir(cwd):
            raise BadRequest(f"cwd: {cwd_arg!r} is not a directory")
    return command, float(timeout), env, cwd


class CommandStream:
    """The NDJSON body of /execute/stream; closing it early kills the command."""

    def __init__(self, rt: Runtime, command: Command, slot: int,
                 client_fd: Client | None) -> None:
        self.rt = rt
        self.command = command
        self.slot = slot
        self.client_fd = client_fd
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        decoder = StreamDecoder()
        try:
            for name, data in self.command.chunks(self.client_fd):
                text = decoder.decode(name, data)
                if text:
                    yield (json.dumps({"stream": name, "data": text}) + "\n").encode()
            for name in ("stdout", "stderr"):
                text = decoder.flush(name)
                if text:
                    yield (json.dumps({"stream": name, "data": text}) + "\n").encode()
            out = self.command.outcome
            final = {k: v for k, v in out.to_json().items() if k not in ("stdout", "stderr")}
            yield (json.dumps(final) + "\n").encode()
        finally:
            self.close()

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            self.command.close()  # no-op when finished; kills the tree when abandoned
        finally:
            self.rt.metrics.running.dec()
            self.rt.slots.release(self.slot)
            self.rt.record(self.command)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Defaults, then SANDBOX_RUNTIME_* (and SANDBOX_BASE_DIR), then `config`."""
    cfg = config_mod.load(config)
    if not os.path.isdir(cfg.base_dir):
        raise ValueError(f"workspace {cfg.base_dir!r} is not a directory")
    app = Flask("sandbox_runtime")
    # A path like /download//etc/passwd must reach the confinement check (403), not a redirect.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["anypath"] = AnyPath
    app.config.from_mapping(RUNTIME=cfg)
    rt = Runtime(cfg)
    app.extensions["sandbox_runtime"] = rt
    log.info("sandbox-runtime settings %s rlimits=%s", config_mod.describe(cfg), rt.limits.kind)

    def start(command: str, timeout: float, env: dict[str, str],
              cwd: str) -> tuple[Command, int]:
        rt.prepare_process()
        slot = rt.slots.acquire()
        if slot is None:
            rt.metrics.rejected.inc()
            raise TooManyRequests(f"busy: {cfg.max_concurrent_commands} commands already "
                                  "running; retry later")
        try:
            cmd = Command(command, timeout_s=timeout, cwd=cwd, env=env, config=cfg,
                          limits=rt.limits, base_env=rt.base_env)
        except OSError as exc:
            rt.slots.release(slot)
            # EAGAIN: the process limit is reached (a fork bomb is still being cleaned up).
            raise ServiceUnavailable(f"cannot start the command: {exc.strerror}") from None
        except BaseException:
            rt.slots.release(slot)
            raise
        rt.metrics.running.inc()
        return cmd, slot

    def client_fd(environ: Mapping[str, Any] | None = None) -> Client | None:
        # gunicorn hands the client socket to the app, stdio.py its stdin socket; a hang-up
        # then kills the command.
        env = request.environ if environ is None else environ
        stdin_socket = env.get(STDIO_CLIENT)
        if stdin_socket is not None:
            return stdin_socket  # type: ignore[no-any-return]
        sock = env.get("gunicorn.socket")
        try:
            return sock.fileno() if sock is not None else None
        except OSError:
            return None

    def body_limit() -> int:
        return cfg.max_command_bytes * 2 + cfg.max_env_entries * (MAX_ENV_VALUE + 256) + 4096

    @app.get("/")
    def index() -> Response:
        return _json({"status": "ok", "service": "sandbox-runtime"})

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(rt.metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    def run_execute(body: Mapping[str, Any], fd: int | None) -> dict[str, object]:
        cmd, slot = start(*parse_execute(body, rt))
        try:
            outcome = cmd.run(fd)
        finally:
            rt.metrics.running.dec()
            rt.slots.release(slot)
        rt.record(cmd)
        return outcome.to_json()

    @app.post("/execute")
    def execute() -> Response:  # front() answers POST first; the route gives GET a 405
        return _json(run_execute(_read_json_body(body_limit()), client_fd()))

    @app.post("/execute/stream")
    def execute_stream() -> Response:
        cmd, slot = start(*parse_execute(_read_json_body(body_limit()), rt))
        return Response(CommandStream(rt, cmd, slot, client_fd()), mimetype=NDJSON,
                        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})

    @app.post("/upload")
    def upload() -> Response:
        up = files.Upload(cfg.base_dir, cfg.max_upload_bytes)
        environ = request.environ
        # A server that ends the body itself (gunicorn, stdio with chunked framing) is read
        # directly: werkzeug's LimitedStream would copy every chunk once more.
        stream = environ["wsgi.input"] if environ.get("wsgi.input_terminated") else request.stream
        try:
            result = up.receive(request.content_type, request.content_length, stream.read)
        except BaseException:
            up.release()
            raise
        rt.metrics.uploaded.inc(up.size)
        response = _json(result)
        response.call_on_close(up.release)
        return response

    @app.get("/download/<anypath:path>")
    def download(path: str) -> Response:
        file, size = files.open_for_download(cfg.base_dir, path)
        rt.metrics.downloaded.inc(size)
        name = os.path.basename(path)
        response = Response(wrap_file(request.environ, file, DOWNLOAD_CHUNK),
                            mimetype="application/octet-stream", direct_passthrough=True)
        response.content_length = size
        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
        return response

    @app.get("/list")
    @app.get("/list/")
    @app.get("/list/<anypath:path>")
    def list_path(path: str = "") -> Response:
        return _json(files.list_dir(cfg.base_dir, path, max_entries=cfg.max_list_entries))

    @app.get("/exists")
    @app.get("/exists/")
    @app.get("/exists/<anypath:path>")
    def exists(path: str = "") -> Response:
        return _json({"path": path, "exists": files.exists(cfg.base_dir, path)})

    fixed = {"/": json.dumps({"status": "ok", "service": "sandbox-runtime"}).encode(),
             "/healthz": json.dumps({"status": "ok"}).encode()}

    def fast_execute(environ: dict[str, Any]) -> tuple[int, bytes]:
        try:
            raw_length = environ.get("CONTENT_LENGTH")
            try:
                length = int(raw_length) if raw_length else None
            except ValueError:
                raise BadRequest("Content-Length: not a number") from None
            if length is None and not environ.get("wsgi.input_terminated"):
                length = 0  # WSGI: no length and no terminated stream means no body
            body = read_json(environ["wsgi.input"], length, body_limit())
            return 200, json.dumps(run_execute(body, client_fd(environ))).encode()
        except HTTPException as exc:
            status = exc.code or 500
            rt.metrics.errors.labels(str(status)).inc()
            return status, json.dumps({"error": exc.description or exc.name}).encode()
        except Exception:
            log.exception("unhandled error on POST /execute")
            rt.metrics.errors.labels("500").inc()
            return 500, b'{"error": "internal error"}'

    flask_wsgi = app.wsgi_app

    def front(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The hottest routes without Flask's per-request objects (about 0.1 ms of CPU
        each); everything else, and every other method, goes to the Flask routes."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "GET" and path in fixed:
            body = fixed[path]
            start_response("200 OK", [("Content-Type", JSON),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if method == "POST" and path == "/execute":
            status, body = fast_execute(environ)
            start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}",
                           [("Content-Type", JSON), ("Content-Length", str(len(body)))])
            return [body]
        return flask_wsgi(environ, start_response)  # type: ignore[no-any-return]

    app.wsgi_app = front  # type: ignore[method-assign]

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        rt.metrics.errors.labels(str(status)).inc()
        response = _json({"error": exc.description or exc.name}, status)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        rt.metrics.errors.labels("500").inc()
        return _json({"error": "internal error"}, 500)

    return app
