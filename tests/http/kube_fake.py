"""The slice of kube-apiserver the router's Kubernetes source uses, with a watch the test steers.

`FakeApiServer` (an aiohttp app in a thread on 127.0.0.1) serves list, watch and get of
`agents.x-k8s.io/v1alpha1` Sandboxes in any namespace, from one store with a resourceVersion
counter, as the API server does. What the watch delivers is up to the test: `put`/`delete`
change the store at once (a direct GET sees it, a consistent read) but queue the watch event
until `deliver()`, so the router's cache lags exactly as long as the test wants. `gets` lists
every direct read; `fail_gets` makes them answer 500. `kubeconfig(path)` writes a kubeconfig
pointing at it. Only for the router's HTTP tier: the real API server is the control-plane tier's.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from sandbox_common import contract
from testbed.support import free_port

PREFIX = f"/apis/{contract.SANDBOX_API}"


class FakeApiServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.held: list[dict[str, Any]] = []
        self.gets: list[tuple[str, str]] = []
        self.fail_gets = False
        self._versions = itertools.count(100)
        self._watchers: list[asyncio.Queue[dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # ---- what the test does ----------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update a Sandbox (a new uid unless it carries one); its event is held."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        key = (meta["namespace"], meta["name"])
        with self._lock:
            meta["resourceVersion"] = str(next(self._versions))
            kind = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self.held.append({"type": kind, "object": copy.deepcopy(obj)})
        return copy.deepcopy(obj)

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            obj = self.objects.pop((namespace, name))
            obj["metadata"]["resourceVersion"] = str(next(self._versions))
            self.held.append({"type": "DELETED", "object": obj})

    def deliver(self) -> None:
        """Send every held event to the open watches, in order."""
        with self._lock:
            events, self.held = self.held, []
        for event in events:
            self._loop.call_soon_threadsafe(self._broadcast, event)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return path

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- the server --------------------------------------------------------------------------

    def _broadcast(self, event: dict[str, Any]) -> None:
        for watcher in self._watchers:
            watcher.put_nowait(event)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get(PREFIX + "/sandboxes", self._collection)
        app.router.add_get(PREFIX + "/namespaces/{ns}/sandboxes", self._collection)
        app.router.add_get(PREFIX + "/namespaces/{ns}/sandboxes/{name}", self._get)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        self.gets.append(key)
        if self.fail_gets:
            return _status(500, "InternalError")
        with self._lock:
            obj = copy.deepcopy(self.objects.get(key))
        return web.json_response(obj) if obj is not None else _status(404, "NotFound")

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("ns")
        if request.query.get("watch") not in ("true", "1", "True"):
            with self._lock:
                items = [copy.deepcopy(o) for (ns, _), o in sorted(self.objects.items())
                         if namespace in (None, ns)]
                version = str(next(self._versions))
            return web.json_response({"apiVersion": contract.SANDBOX_API,
                                      "kind": "SandboxList", "items": items,
                                      "metadata": {"resourceVersion": version}})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        watcher: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        since = int(request.query.get("resourceVersion") or 0)
        self._watchers.append(watcher)
        try:
            timeout = float(request.query.get("timeoutSeconds", "300"))
            while True:
                try:
                    event = await asyncio.wait_for(watcher.get(), timeout)
                except TimeoutError:
                    break
                meta = event["object"]["metadata"]
                # As the API server: a watch from version V sends only what came after V.
                if namespace in (None, meta["namespace"]) and \
                        int(meta["resourceVersion"]) > since:
                    await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self._watchers.remove(watcher)
        return response


def _status(code: int, reason: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": reason, "code": code}, status=code)
