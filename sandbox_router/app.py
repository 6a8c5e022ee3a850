"""The router's aiohttp application: ``create_app(config) -> web.Application``.

Called by ``__main__`` (the ``sandbox-router`` script) and by tests. It wires config, the
resolution source, the address policy, the token check, metrics and the forwarding handler,
and serves the router's own GET /healthz, /readyz and /metrics. A request that carries
``X-Sandbox-ID`` is always forwarded (so a sandbox's own /healthz stays reachable); anything
else that is not one of those three endpoints gets 401 or 400. It must not read the
environment at import time, and it refuses to start without a token unless told
``insecure_no_auth``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sandbox_router.addresses import AddressPolicy
from sandbox_router.auth import TokenCheck
from sandbox_router.config import Config, load_config
from sandbox_router.connections import ConnectionGuard
from sandbox_router.headers import SANDBOX_ID
from sandbox_router.idle import Idle
from sandbox_router.metrics import create_metrics
from sandbox_router.proxy import Forwarder
from sandbox_router.resolve import Resolver
from sandbox_router.sources import KubernetesSource, Source, StaticSource

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", Config)
FORWARDER_KEY = web.AppKey("forwarder", Forwarder)
GUARD_KEY = web.AppKey("guard", ConnectionGuard)
# Never auto-added to a forwarded request: the sandbox sees the caller's headers, not ours.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def build_source(config: Config) -> Source:
    if config.source == "static" or (not config.source and config.static_file):
        return StaticSource.from_file(config.static_file)
    if config.allow_loopback_pods:
        logging.getLogger("sandbox_router").warning(
            "allow_loopback_pods is on: sandboxes whose pod IP is loopback are reachable; "
            "only for a control plane whose pods run on this machine")
    return KubernetesSource(namespaces=config.namespaces,
                            allow_loopback=config.allow_loopback_pods,
                            api_timeout=config.api_timeout,
                            api_concurrency=config.api_concurrency,
                            hold_file=config.test_watch_hold_file,
                            events=config.events)


def create_app(config: Mapping[str, Any] | None = None, *,
               source: Source | None = None) -> web.Application:
    """The router app. `config` overrides SANDBOX_ROUTER_* settings; `source` replaces the
    configured resolution source (a test's own KubernetesSource, for instance)."""
    settings = load_config(config)
    tokens = TokenCheck(token=settings.token, token_file=settings.token_file,
                        reload_interval=settings.token_reload_seconds)
    if not tokens.configured:
        if not settings.insecure_no_auth:
            raise ValueError("no bearer token: set SANDBOX_ROUTER_TOKEN_FILE (or "
                             "SANDBOX_ROUTER_TOKEN), or pass --insecure-no-auth explicitly")
        log.warning("authentication disabled (insecure_no_auth): anyone who reaches this "
                    "port can reach every sandbox")
    chosen = source if source is not None else build_source(settings)
    policy = AddressPolicy.build(allow_loopback=chosen.allow_loopback,
                                 allowed_cidrs=settings.allowed_cidrs)
    if policy.allow_loopback:
        log.warning("loopback sandbox addresses allowed (local/test configuration)")
    metrics = create_metrics()
    # Idle sandboxes exist only where a live source can be written to (docs/router.md).
    idle = Idle(chosen, metrics, wake_timeout=settings.wake_timeout,
                activity_interval=settings.activity_interval) if chosen.live else None
    resolver = Resolver(chosen, policy, cluster_domain=settings.cluster_domain,
                        on_read=lambda why, result: metrics.reads.labels(why, result).inc(),
                        waker=idle.wake if idle is not None else None)
    metrics.sandboxes.set_function(lambda: len(chosen))

    def session_factory() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections, limit_per_host=0,
            keepalive_timeout=settings.keepalive_timeout, use_dns_cache=False)
        # No cookie jar: one sandbox's Set-Cookie must never travel to another sandbox.
        # No decompression: bytes pass through as the sandbox sent them, length included.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS, trust_env=False, read_bufsize=256 * 1024)

    forwarder = Forwarder(config=settings, resolver=resolver, metrics=metrics,
                          tokens=tokens if tokens.configured else None,
                          session_factory=session_factory, idle=idle)
    # Installed on the server by __main__.serve, which may lower the limit to what the
    # process's descriptors allow.
    guard = ConnectionGuard(settings.max_client_connections,
                            on_close=lambda reason: metrics.connections_closed.labels(reason).inc())
    metrics.connections.set_function(lambda: len(guard))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "synced": chosen.ready,
                                  "sandboxes": len(chosen)})

    async def readyz(request: web.Request) -> web.Response:
        if chosen.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"error": "sandbox cache not synced yet"}, status=503)

    async def metrics_view(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    own = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_view}

    # A middleware rather than a route: it sees every request, including targets the URL
    # dispatcher cannot match (CONNECT authority-form, absolute-form without a path), so each
    # one gets our JSON answer instead of aiohttp's own 404.
    @web.middleware
    async def dispatch(request: web.Request, handler: Any) -> web.StreamResponse:
        with guard.serving(request.protocol):
            if SANDBOX_ID not in request.headers and request.method in ("GET", "HEAD"):
                view = own.get(request.raw_path)
                if view is not None:
                    return await view(request)
            return await forwarder.handle(request)

    app = web.Application(middlewares=[dispatch])
    app[CONFIG_KEY] = settings
    app[FORWARDER_KEY] = forwarder
    app[GUARD_KEY] = guard

    async def on_startup(app: web.Application) -> None:
        chosen.start()
        await forwarder.start()
        if idle is not None:
            idle.start()

    async def on_cleanup(app: web.Application) -> None:
        if idle is not None:
            await idle.stop()
        await forwarder.close()
        chosen.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
