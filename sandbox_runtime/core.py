"""The runtime's work behind the routes, without Flask, werkzeug or prometheus_client.

Called by app.py (the Flask app served by gunicorn) and by stdio.py (`--stdio`, which answers
its hot routes here and builds the Flask app only when a request needs it). Holds what every
view shares (`Runtime`: settings, command slots, rlimit mechanism, metrics), the request
parsing and validation of POST /execute, and `Service.front`, the WSGI front that answers
GET /, /healthz and POST /execute without Flask's per-request objects.

It must not import Flask, werkzeug or prometheus_client at module level: under gVisor's
ptrace platform those imports take about half a second, which a local sandbox's cold start
cannot afford. Errors are errors.HTTPError, answered as `{"error": ...}`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sandbox_runtime import config as config_mod
from sandbox_runtime import files, procs, slots
from sandbox_runtime.errors import (
    BadRequest,
    HTTPError,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    status_line,
)
from sandbox_runtime.execute import Client, Command, StreamDecoder

log = logging.getLogger("sandbox_runtime")

EXECUTE_FIELDS = {"command", "timeout", "env", "cwd"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV_VALUE = 128 * 1024
JSON = "application/json"
NDJSON = "application/x-ndjson"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STDIO_CLIENT = "sandbox_runtime.client_socket"  # = stdio.CLIENT_KEY (stdio imports us)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)
# name, help, label names; counters are exposed with a `_total` suffix.
COUNTERS = {
    "commands": ("sandbox_runtime_commands", "Commands finished, by outcome", ("outcome",)),
    "rejected": ("sandbox_runtime_commands_rejected",
                 "Commands refused because the concurrency bound was reached", ()),
    "killed": ("sandbox_runtime_processes_killed",
               "Processes killed when commands timed out or were abandoned", ()),
    "truncated": ("sandbox_runtime_output_truncated", "Streams cut at the output cap",
                  ("stream",)),
    "uploaded": ("sandbox_runtime_upload_bytes", "Bytes uploaded", ()),
    "downloaded": ("sandbox_runtime_download_bytes", "Bytes offered for download", ()),
    "errors": ("sandbox_runtime_http_errors", "Error answers, by status", ("status",)),
}
DURATION = ("sandbox_runtime_command_duration_seconds", "Wall time of commands")
RUNNING = ("sandbox_runtime_commands_running", "Commands running now")


class MetricsLike:
    """What the views use of a metrics set: the base of app.Metrics and PlainMetrics, which
    set these attributes when they start."""

    commands: Any
    duration: Any
    running: Any
    rejected: Any
    killed: Any
    truncated: Any
    uploaded: Any
    downloaded: Any
    errors: Any

    def exposition(self) -> bytes:
        raise NotImplementedError


class _Value:
    """One counter or gauge of PlainMetrics (optionally one of a labelled family)."""

    def __init__(self) -> None:
        self.value = 0.0
        self.children: dict[tuple[str, ...], _Value] = {}

    def labels(self, *names: str) -> _Value:
        return self.children.setdefault(names, _Value())

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(DURATION_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


class PlainMetrics(MetricsLike):
    """The runtime's metrics as plain numbers, for the single-process --stdio server.

    Same names and meaning as app.Metrics; prometheus_client is imported only when GET
    /metrics asks for the exposition. Updates are not locked: the stdio server handles one
    request at a time.
    """

    def __init__(self) -> None:
        for attr in COUNTERS:
            setattr(self, attr, _Value())
        self.running = _Value()
        self.duration = _Histogram()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for attr, (name, doc, label_names) in COUNTERS.items():
            value: _Value = getattr(self, attr)
            family = CounterMetricFamily(name, doc, labels=label_names)
            if label_names:
                for names, child in sorted(value.children.items()):
                    family.add_metric(list(names), child.value)
            else:
                family.add_metric([], value.value)
            yield family
        running = GaugeMetricFamily(*RUNNING)
        running.add_metric([], self.running.value)
        yield running
        cumulative, buckets = 0, []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.duration.counts,
                                strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)),
                            cumulative))
        yield HistogramMetricFamily(*DURATION, buckets=buckets, sum_value=self.duration.sum)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(self)  # type: ignore[arg-type]
        return generate_latest(registry)


class Runtime:
    """What the views share: settings, the command slots, the command keepers, metrics."""

    def __init__(self, cfg: config_mod.Config, metrics: MetricsLike,
                 keepers: procs.KeeperPool | None = None) -> None:
        """`keepers`: a pool already started in this process (the --stdio launcher starts
        its first keeper before the rest of the runtime is imported)."""
        self.cfg = cfg
        # Shared by every gunicorn worker forked from the process that made it.
        self.slots = slots.make(cfg.max_concurrent_commands)
        self.metrics = metrics
        # Commands see the pod's environment, minus the server's own settings.
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(config_mod.ENV_PREFIX) and k != MULTIPROC_ENV}
        self._keepers = keepers
        self._lock = threading.Lock()

    @property
    def keepers(self) -> procs.KeeperPool:
        """This process's keepers; made on first need after a fork (gunicorn's workers),
        never shared across processes: a keeper answers only the process that started it."""
        pool = self._keepers
        if pool is None or pool.owner != os.getpid():
            with self._lock:
                pool = self._keepers
                if pool is None or pool.owner != os.getpid():
                    pool = self._keepers = procs.KeeperPool(self.cfg)
        return pool

    def prepare_process(self) -> None:
        """Per-process set-up (a gunicorn worker after its fork): one keeper ready."""
        self.keepers.prewarm()

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


def body_length(environ: Mapping[str, Any]) -> int | None:
    """The request body's length for read_json (None: read to the end of a terminated body)."""
    raw_length = environ.get("CONTENT_LENGTH")
    try:
        length = int(raw_length) if raw_length else None
    except ValueError:
        raise BadRequest("Content-Length: not a number") from None
    if length is None and not environ.get("wsgi.input_terminated"):
        length = 0  # WSGI: no length and no terminated stream means no body
    return length


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (JSON's \\ud800 escapes give lone surrogates,
    which no argv or environment can carry)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    if "\0" in command or not _encodable(command) or \
            len(command.encode()) > cfg.max_command_bytes:
        raise BadRequest(f"command: must hold no NUL or lone surrogates and at most "
                         f"{cfg.max_command_bytes} bytes")
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
        if not ENV_NAME.match(key):
            raise BadRequest(f"env: invalid variable name {key[:100]!r}")
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_ENV_VALUE \
                or not _encodable(value):
            raise BadRequest(f"env: value of {key!r} must be a string without NUL or lone "
                             f"surrogates, at most {MAX_ENV_VALUE} characters")
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


def client_of(environ: Mapping[str, Any]) -> Client | None:
    """The client's connection, to watch for a hang-up while a command runs: gunicorn's
    socket (as an fd), or stdio's stdin socket object."""
    stdin_socket = environ.get(STDIO_CLIENT)
    if stdin_socket is not None:
        return stdin_socket  # type: ignore[no-any-return]
    sock = environ.get("gunicorn.socket")
    try:
        return sock.fileno() if sock is not None else None
    except OSError:
        return None


StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Service:
    """The routes' work on one Runtime; `front` answers the hot routes without Flask."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.cfg
        self.body_limit = (cfg.max_command_bytes * 2 + cfg.max_env_entries
                           * (MAX_ENV_VALUE + 256) + 4096)
        self.fixed = {"/": json.dumps({"status": "ok", "service": "sandbox-runtime"}).encode(),
                      "/healthz": json.dumps({"status": "ok"}).encode()}

    def start(self, command: str, timeout: float, env: dict[str, str],
              cwd: str) -> tuple[Command, int]:
        rt = self.rt
        slot = rt.slots.acquire()
        if slot is None:
            rt.metrics.rejected.inc()
            raise TooManyRequests(f"busy: {rt.cfg.max_concurrent_commands} commands already "
                                  "running; retry later")
        try:
            cmd = Command(command, timeout_s=timeout, cwd=cwd, env=env, config=rt.cfg,
                          keepers=rt.keepers, base_env=rt.base_env)
        except OSError as exc:
            rt.slots.release(slot)
            # EAGAIN: the process limit is reached (a fork bomb is still being cleaned up).
            raise ServiceUnavailable(f"cannot start the command: {exc.strerror}") from None
        except BaseException:
            rt.slots.release(slot)
            raise
        rt.metrics.running.inc()
        return cmd, slot

    def run_execute(self, body: Mapping[str, Any], client: Client | None) -> dict[str, object]:
        cmd, slot = self.start(*parse_execute(body, self.rt))
        try:
            outcome = cmd.run(client)
        finally:
            self.rt.metrics.running.dec()
            self.rt.slots.release(slot)
        self.rt.record(cmd)
        return outcome.to_json()

    def read_body(self, environ: Mapping[str, Any]) -> dict[str, Any]:
        return read_json(environ["wsgi.input"], body_length(environ), self.body_limit)

    def error(self, exc: HTTPError) -> tuple[int, bytes]:
        self.rt.metrics.errors.labels(str(exc.code)).inc()
        return exc.code, json.dumps({"error": exc.description}).encode()

    def answer(self, environ: dict[str, Any], work: Callable[[], Any]) -> tuple[int, bytes]:
        """Run `work` (-> a JSON-able body); errors as JSON, unexpected ones logged, no trace."""
        try:
            return 200, json.dumps(work()).encode()
        except HTTPError as exc:
            return self.error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", environ["REQUEST_METHOD"],
                          environ.get("PATH_INFO", ""))
            self.rt.metrics.errors.labels("500").inc()
            return 500, b'{"error": "internal error"}'

    def front(self, environ: dict[str, Any], start_response: StartResponse,
              rest: WSGIApp) -> Iterable[bytes]:
        """GET /, /healthz and POST /execute without Flask's per-request objects (about
        0.1 ms of CPU each); everything else, and every other method, goes to `rest`."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "GET" and path in self.fixed:
            return _send(start_response, 200, self.fixed[path])
        if method == "POST" and path == "/execute":
            status, body = self.answer(environ, lambda: self.run_execute(
                self.read_body(environ), client_of(environ)))
            return _send(start_response, status, body)
        return rest(environ, start_response)

    def stdio_front(self, environ: dict[str, Any], start_response: StartResponse,
                    rest: WSGIApp) -> Iterable[bytes]:
        """front(), plus what a local sandbox's client calls most, for the --stdio server:
        streaming commands, /exists and /metrics. The rest needs Flask (`rest`)."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "POST" and path == "/execute/stream":
            try:
                cmd, slot = self.start(*parse_execute(self.read_body(environ), self.rt))
            except HTTPError as exc:
                return _send(start_response, *self.error(exc))
            start_response("200 OK", [("Content-Type", NDJSON), ("X-Accel-Buffering", "no"),
                                      ("Cache-Control", "no-store")])
            return CommandStream(self.rt, cmd, slot, client_of(environ))
        if method == "GET" and (path in ("/exists", "/exists/") or path.startswith("/exists/")):
            # WSGI carries the path as latin-1; Flask reads it as UTF-8 (bad bytes: U+FFFD).
            user_path = path[len("/exists/"):].encode("latin-1").decode("utf-8", "replace")
            status, body = self.answer(environ, lambda: {
                "path": user_path, "exists": files.exists(self.rt.cfg.base_dir, user_path)})
            return _send(start_response, status, body)
        if method == "GET" and path == "/metrics":
            body = self.rt.metrics.exposition()
            return _send(start_response, 200, body,
                         "text/plain; version=0.0.4; charset=utf-8")
        return self.front(environ, start_response, rest)


def _send(start_response: StartResponse, status: int, body: bytes,
          content_type: str = JSON) -> list[bytes]:
    start_response(status_line(status), [("Content-Type", content_type),
                                         ("Content-Length", str(len(body)))])
    return [body]
