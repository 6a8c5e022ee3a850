"""The runtime's Flask app: create_app(config) and its route table.

Served by gunicorn (`sandbox-runtime --port N`, see __main__.py) or over stdin/stdout
(`sandbox-runtime --stdio`, see stdio.py, which builds it only when a request needs Flask).
Views only parse, validate and shape JSON; the work is in core.py, execute.py and files.py.
Every error answers `{"error": "<message>"}` with its status and never a stack trace. No
module-level app: the environment is read when the factory runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
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
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter
from werkzeug.wsgi import wrap_file

from sandbox_runtime import config as config_mod
from sandbox_runtime import core, files
from sandbox_runtime.core import (
    COUNTERS,
    DURATION,
    DURATION_BUCKETS,
    JSON,
    MULTIPROC_ENV,
    NDJSON,
    RUNNING,
    CommandStream,
    Runtime,
    Service,
    parse_execute,
    read_json,
)
from sandbox_runtime.errors import HTTPError

__all__ = ["Metrics", "Runtime", "create_app", "parse_execute", "read_json"]

log = logging.getLogger("sandbox_runtime")

DOWNLOAD_CHUNK = 1024 * 1024


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


class Metrics(core.MetricsLike):
    """The app's own registry, so two apps in one process (tests) never collide.

    With several workers, each writes its values to files in `multiprocess_dir()` and
    GET /metrics sums them over all workers (dead ones included for counters), so the
    figures are the pod's, whichever worker answers. Names as core.PlainMetrics.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        for attr, (name, doc, label_names) in COUNTERS.items():
            setattr(self, attr, Counter(f"{name}_total", doc, list(label_names),
                                        registry=self.registry))
        self.duration = Histogram(*DURATION, registry=self.registry, buckets=DURATION_BUCKETS)
        self.running = Gauge(*RUNNING, registry=self.registry, multiprocess_mode="livesum")

    def exposition(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry)


def create_app(config: Mapping[str, Any] | None = None, *,
               runtime: Runtime | None = None) -> Flask:
    """Defaults, then SANDBOX_RUNTIME_* (and SANDBOX_BASE_DIR), then `config`.

    `runtime`: an existing core.Runtime to serve (stdio.py's, built before Flask was
    imported); its settings are used and `config` is ignored.
    """
    if runtime is None:
        cfg = config_mod.load(config)
        if not os.path.isdir(cfg.base_dir):
            raise ValueError(f"workspace {cfg.base_dir!r} is not a directory")
        rt = Runtime(cfg, Metrics())
        log.info("sandbox-runtime settings %s", config_mod.describe(cfg))
    else:
        rt, cfg = runtime, runtime.cfg
    service = Service(rt)
    app = Flask("sandbox_runtime")
    # A path like /download//etc/passwd must reach the confinement check (403), not a redirect.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["anypath"] = AnyPath
    app.config.from_mapping(RUNTIME=cfg)
    app.extensions["sandbox_runtime"] = rt

    @app.get("/")
    def index() -> Response:
        return _json({"status": "ok", "service": "sandbox-runtime"})

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(rt.metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/execute")
    def execute() -> Response:  # front() answers POST first; the route gives GET a 405
        return _json(service.run_execute(service.read_body(request.environ),
                                         core.client_of(request.environ)))

    @app.post("/execute/stream")
    def execute_stream() -> Response:
        cmd, slot = service.start(*parse_execute(service.read_body(request.environ), rt))
        return Response(CommandStream(rt, cmd, slot, core.client_of(request.environ)),
                        mimetype=NDJSON,
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

    flask_wsgi = app.wsgi_app

    def front(environ: dict[str, Any], start_response: core.StartResponse) -> Any:
        return service.front(environ, start_response, flask_wsgi)

    app.wsgi_app = front  # type: ignore[method-assign]

    @app.errorhandler(HTTPError)
    def runtime_error(exc: HTTPError) -> Response:
        rt.metrics.errors.labels(str(exc.code)).inc()
        return _json({"error": exc.description}, exc.code)

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
