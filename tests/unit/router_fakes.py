"""A live resolution source without a cluster, for the router's unit tests.

`CacheSource` holds two views of the Sandboxes, as the Kubernetes source does: `cache` (what
the watch has delivered) and `server` (what the API server would answer a direct read with).
They agree unless a test changes one of them: `serve(obj)` / `remove(ns, name)` change only
the server, so the watch lags until `deliver(...)` applies the events.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

from sandbox_common import contract
from sandbox_router.records import SandboxCache, record_from_sandbox
from sandbox_router.sources import SourceUnavailable


def sandbox_object(name: str = "sb", namespace: str = "default", *,
                   ips: tuple[str, ...] = ("10.244.0.7",), ports: tuple[Any, ...] = (8888,),
                   rv: str = "1", uid: str | None = None, ready: str | None = "True",
                   reason: str = contract.SANDBOX_READY, fqdn: str | None = None,
                   pod: str | None = None,
                   pod_ips: list[Any] | None = None) -> dict[str, Any]:
    """A Sandbox as the API server returns it after the hooks made it Ready (`ready=None`: no
    Ready condition at all). `pod_ips` replaces status.podIPs as given (else `ips` as
    [{"ip": ...}])."""
    status: dict[str, Any] = {"podIPs": pod_ips if pod_ips is not None else [
        {"ip": ip} for ip in ips]}
    if ready is not None:
        status["conditions"] = [{"type": contract.READY, "status": ready, "reason": reason,
                                 "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    if fqdn:
        status["serviceFQDN"] = fqdn
    if pod:
        status["podName"] = pod
    return {
        "apiVersion": contract.SANDBOX_API, "kind": contract.SANDBOX_KIND,
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv,
                     "uid": uid or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}.{name}"))},
        "spec": {"podTemplate": {"spec": {"containers": [
            {"name": "runtime", "image": "x", "ports": [{"containerPort": p} for p in ports]},
        ]}}},
        "status": status,
    }


class CacheSource:
    """Serves the given Sandbox objects as the Kubernetes source would, without a cluster."""

    ready = True
    live = True

    def __init__(self, *objs: dict[str, Any], allow_loopback: bool = False) -> None:
        self.cache = SandboxCache()
        self.cache.replace(objs, version=max(
            (obj["metadata"].get("resourceVersion", "0") for obj in objs), key=int,
            default="0"))
        self.server: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in objs:
            self.serve(obj)
        self.allow_loopback = allow_loopback
        self.fetched: list[tuple[str, str]] = []  # every direct read, in order
        self.failure: Exception | None = None  # raised by the next reads, when set
        self.gate: asyncio.Event | None = None  # reads wait for it, when set

    def serve(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.server[(meta.get("namespace", "default"), meta["name"])] = copy.deepcopy(obj)

    def remove(self, namespace: str, name: str) -> None:
        self.server.pop((namespace, name), None)

    def deliver(self, *events: tuple[str, dict[str, Any]]) -> None:
        """Watch events (type, object) reaching the cache, in order."""
        for kind, obj in events:
            self.cache.apply({"type": kind, "object": obj})

    def __len__(self) -> int:
        return len(self.cache)

    def lookup(self, namespace: str, name: str) -> Any:
        return self.cache.get(namespace, name)

    async def fetch(self, namespace: str, name: str) -> Any:
        self.fetched.append((namespace, name))
        obj = copy.deepcopy(self.server.get((namespace, name)))  # as read when it began
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise SourceUnavailable(str(self.failure))
        record = record_from_sandbox(obj, fetched=True) if obj is not None else None
        if record is not None:
            self.cache.offer(record)
        return record

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
