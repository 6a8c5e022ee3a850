"""The runtime's route table: each route of the API and the handler that answers it.

Called by app.create_app(), which serves `Routes(runtime).table()` through web.py over TCP
(gunicorn) and over stdin/stdout (stdio.py): one table, one set of handlers, whatever the
transport. A handler reads a web.Request and returns a web.Response; it raises
errors.HTTPError for a client's mistake (web.py answers it as JSON). The work is elsewhere:
commands.py (run a command), files.py, fileops.py and confine.py (the workspace), multipart.py (the
upload body), metrics.py (GET /metrics). Handlers must not touch the transport (no environ
keys, no sockets) beyond what web.Request offers.
"""

from __future__ import annotations

import json
import os

from sandbox_runtime import background, commands, fileops, files, metrics, multipart
from sandbox_runtime.errors import BadRequest, NotFound, RequestEntityTooLarge
from sandbox_runtime.runtime import Runtime
from sandbox_runtime.web import Handler, Request, Response, file_answer, json_answer

DOWNLOAD_CHUNK = 1024 * 1024
INDEX = json.dumps({"status": "ok", "service": "sandbox-runtime"}).encode()
HEALTHY = json.dumps({"status": "ok"}).encode()
# Imported by the first request that needs them, or in the background by the --stdio
# launcher once it is idle (launch.py): each costs tens of milliseconds under gVisor.
LAZY_MODULES = ("werkzeug.http", "urllib.parse")


class Routes:
    """The handlers of one server (see the module docstring)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg
        self.body_limit = commands.body_limit(rt)
        self.processes = background.Processes(rt)

    def table(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler); a path ending in "*" takes any rest (see web.Router)."""
        return [
            ("GET", "/", self.index),
            ("GET", "/healthz", self.healthz),
            ("GET", "/metrics", self.metrics),
            ("POST", "/execute", self.execute),
            ("POST", "/execute/stream", self.execute_stream),
            ("POST", "/upload", self.upload),
            ("GET", "/download/*", self.download),
            ("GET", "/list", self.list_dir),
            ("GET", "/list/*", self.list_dir),
            ("GET", "/exists", self.exists),
            ("GET", "/exists/*", self.exists),
            ("GET", "/stat", self.stat),
            ("GET", "/stat/*", self.stat),
            ("POST", "/mkdir", self.mkdir),
            ("POST", "/remove", self.remove),
            ("POST", "/move", self.move),
            ("POST", "/copy", self.copy),
            ("GET", "/archive", self.archive_out),
            ("GET", "/archive/*", self.archive_out),
            ("POST", "/archive", self.archive_in),
            ("POST", "/archive/*", self.archive_in),
            ("POST", "/processes", self.process_start),
            ("GET", "/processes", self.process_list),
            ("GET", "/processes/*", self.process_get),
            ("POST", "/processes/*", self.process_act),
        ]

    def index(self, request: Request) -> Response:
        return Response(INDEX)

    def healthz(self, request: Request) -> Response:
        return Response(HEALTHY)

    def metrics(self, request: Request) -> Response:
        return Response(self.rt.metrics.exposition(), content_type=metrics.CONTENT_TYPE)

    def execute(self, request: Request) -> Response:
        job = commands.parse(request.json(self.body_limit), self.rt)
        return json_answer(commands.run(self.rt, job, request.client))

    def execute_stream(self, request: Request) -> Response:
        job = commands.parse(request.json(self.body_limit), self.rt)
        stream = commands.CommandStream(commands.start(self.rt, job), request.client)
        return Response(stream, content_type="application/x-ndjson",
                        headers=[("X-Accel-Buffering", "no"), ("Cache-Control", "no-store")])

    def upload(self, request: Request) -> Response:
        destination = files.Upload(self.cfg.base_dir, self.cfg.max_upload_bytes)
        try:
            multipart.read_file(request.content_type, request.content_length,
                                self.cfg.max_upload_bytes, request.reader(), destination)
            result = destination.commit()
        except BaseException:
            destination.abort()
            raise
        self.rt.metrics.uploaded.inc(destination.size)
        return json_answer(result, on_close=destination.release)

    def download(self, request: Request) -> Response:
        from urllib.parse import quote

        file, size = files.open_for_download(self.cfg.base_dir, request.tail)
        self.rt.metrics.downloaded.inc(size)
        name = quote(os.path.basename(request.tail))
        return file_answer(request, file, size, DOWNLOAD_CHUNK,
                           [("Content-Disposition", f"attachment; filename*=UTF-8''{name}")])

    def list_dir(self, request: Request) -> Response:
        return json_answer(files.list_dir(self.cfg.base_dir, request.tail,
                                          max_entries=self.cfg.max_list_entries))

    def exists(self, request: Request) -> Response:
        return json_answer({"path": request.tail,
                            "exists": files.exists(self.cfg.base_dir, request.tail)})

    def stat(self, request: Request) -> Response:
        return json_answer(fileops.stat_path(self.cfg.base_dir, request.tail or "."))

    def mkdir(self, request: Request) -> Response:
        body = request.json(self.body_limit)
        return json_answer(fileops.mkdir(self.cfg.base_dir, _text(body, "path"),
                                         parents=_flag(body, "parents", True)))

    def remove(self, request: Request) -> Response:
        body = request.json(self.body_limit)
        return json_answer(fileops.remove(self.cfg.base_dir, _text(body, "path"),
                                          recursive=_flag(body, "recursive", False)))

    def move(self, request: Request) -> Response:
        body = request.json(self.body_limit)
        return json_answer(fileops.move(self.cfg.base_dir, _text(body, "source"),
                                        _text(body, "destination")))

    def copy(self, request: Request) -> Response:
        body = request.json(self.body_limit)
        return json_answer(fileops.copy(self.cfg.base_dir, _text(body, "source"),
                                        _text(body, "destination")))

    def archive_out(self, request: Request) -> Response:
        stream = fileops.archive_out(self.cfg.base_dir, request.tail or ".")
        return Response(stream, content_type="application/x-tar")

    def archive_in(self, request: Request) -> Response:
        limit = self.cfg.max_upload_bytes
        length = request.content_length
        # The headers of max_archive_entries entries on top of the files' own bytes.
        if length is not None and length > limit + 3 * 512 * self.cfg.max_archive_entries:
            raise RequestEntityTooLarge(f"archive: larger than the {limit} byte limit")
        result = fileops.archive_in(self.cfg.base_dir, request.tail or ".", request.reader(),
                                    max_bytes=limit, max_entries=self.cfg.max_archive_entries)
        self.rt.metrics.uploaded.inc(result["bytes"])
        return json_answer(result)


    def process_start(self, request: Request) -> Response:
        job = commands.parse(request.json(self.body_limit), self.rt, background=True)
        return json_answer(self.processes.start(job), 201)

    def process_list(self, request: Request) -> Response:
        return json_answer(self.processes.list())

    def process_get(self, request: Request) -> Response:
        """GET /processes/<id> (its state), /processes/<id>/output (with its output)."""
        pid, _, what = request.tail.partition("/")
        if what == "":
            return json_answer(self.processes.info(pid))
        if what == "output":
            return json_answer(self.processes.output(pid))
        raise NotFound(f"no such route: /processes/{request.tail[:80]}")

    def process_act(self, request: Request) -> Response:
        """POST /processes/<id>/wait {"timeout"?: s}, /processes/<id>/kill."""
        pid, _, what = request.tail.partition("/")
        if what == "kill":
            return json_answer(self.processes.kill(pid))
        if what == "wait":
            body = request.json(4096) if request.content_length else {}
            timeout = body.get("timeout", background.MAX_WAIT_S)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                    timeout < 0:
                raise BadRequest("timeout: must be a number of seconds, >= 0")
            return json_answer(self.processes.wait(pid, float(timeout)))
        raise NotFound(f"no such route: /processes/{request.tail[:80]}")


def _text(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name}: expected a non-empty string")
    return value


def _flag(body: dict[str, object], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: expected true or false")
    return value


def warm_up() -> None:
    """Import what the first upload or download would otherwise wait for."""
    import importlib

    for name in LAZY_MODULES:
        importlib.import_module(name)
