"""A resolution source over an in-memory SandboxCache, for the router's unit tests."""

from __future__ import annotations

from typing import Any

from sandbox_router.resolve import SandboxCache


class CacheSource:
    """Serves the given Sandbox objects as the Kubernetes source would, without a cluster."""

    ready = True

    def __init__(self, *objs: dict[str, Any], allow_loopback: bool = False) -> None:
        self.cache = SandboxCache()
        self.cache.replace(objs)
        self.allow_loopback = allow_loopback

    def __len__(self) -> int:
        return len(self.cache)

    def lookup(self, namespace: str, name: str) -> Any:
        return self.cache.get(namespace, name)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
