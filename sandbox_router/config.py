"""Router settings: defaults, then ``SANDBOX_ROUTER_*`` environment, then an explicit mapping.

Called by ``app.create_app`` (and so by ``__main__``). The layering and the conversion of
values are ``sandbox_common.settings`` (shared with the runtime); this module declares the
fields and checks that they make sense together. It opens no file (``app`` reads the token
file, ``resolve`` the static file) and never reads the environment at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox_common import settings

ENV_PREFIX = "SANDBOX_ROUTER_"


@dataclass(frozen=True)
class Config:
    """Every knob of the router; each field F can be set by the env var SANDBOX_ROUTER_<F>."""

    # All interfaces: in a pod the router is the cluster's front door; tests pass 127.0.0.1.
    host: str = "0.0.0.0"
    port: int = 8080
    # Bearer token: the file wins over the literal (a mounted Secret rotates in place).
    token: str = ""
    token_file: str = ""
    token_reload_seconds: float = 10.0
    insecure_no_auth: bool = False
    # Resolution source: "kubernetes" (watch cache) or "static" (a YAML/JSON file).
    source: str = ""
    static_file: str = ""
    # Kubernetes source: namespaces to watch ("" = all namespaces the RBAC allows).
    namespaces: tuple[str, ...] = ()
    # Kubernetes source: accept loopback pod IPs. Only for a control plane whose "pods" are
    # processes on this machine (the Metacontroller test tier, a laptop); never in a cluster.
    allow_loopback_pods: bool = False
    cluster_domain: str = "cluster.local"
    # Kubernetes source, requests without X-Sandbox-UID: when the router confirms which
    # Sandbox uid a name means with a direct read from the API server. "request" (default):
    # for every such request, so none reaches a pod whose Sandbox no longer holds the name.
    # "connection" (opt-in, cheaper): the first time a client connection names a sandbox, and
    # again whenever the cache disagrees with what that connection was told; a connection
    # re-used across a re-creation of the name can reach the old pod while the watch lags.
    # docs/router.md has the guarantee of each.
    name_confirmation: str = "request"
    # Kubernetes source: seconds a direct read of a Sandbox may take; how many run at once.
    api_timeout: float = 5.0
    api_concurrency: int = 8
    # Idle sandboxes (docs/router.md): seconds a request for a suspended Sandbox waits for it
    # to wake before a 503 with Retry-After (several times a slow cold wake; well within the
    # read timeouts of proxies and clients; our client sends again); at most this many
    # seconds between two activity reports of one Sandbox (a quarter of its idle timeout when
    # that is shorter).
    wake_timeout: float = 10.0
    activity_interval: float = 10.0
    # Kubernetes source: record Sandbox lifecycle steps as Events (events.py).
    events: bool = True
    # Testing only: while this file exists, watch events are held back (in order) and applied
    # once it is removed, so a test can make the cache lag on purpose. Empty: off.
    test_watch_hold_file: str = ""
    # Extra allow-list: when set, a sandbox address must also fall in one of these CIDRs.
    allowed_cidrs: tuple[str, ...] = ()
    default_port: int = 8888
    default_namespace: str = "default"
    # Timeouts in seconds: connect, and the wait for headers / between body chunks.
    connect_timeout: float = 5.0
    default_timeout: float = 60.0
    max_timeout: float = 3600.0
    max_body_bytes: int = 1024 * 1024 * 1024
    # Bodies up to this size are read whole and sent with Content-Length in one write.
    buffer_body_bytes: int = 64 * 1024
    max_connections: int = 4096
    keepalive_timeout: float = 30.0
    # Client connections (connections.py): at most this many open (lowered at start to what
    # the descriptor limit allows); one that has not sent a whole request head within this
    # many seconds of opening or of its previous answer is closed (aiohttp's own default
    # is 75 s). Slow-header and idle clients get no more.
    max_client_connections: int = 4096
    client_idle_timeout: float = 15.0
    access_log: bool = True
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def auth_required(self) -> bool:
        return not self.insecure_no_auth


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then SANDBOX_ROUTER_* from `environ` (os.environ), then `overrides`; keys
    of `overrides` that name no setting are kept in `extra`."""
    config = settings.load(Config, ENV_PREFIX, overrides, environ, rest="extra")
    check(config)
    return config


def check(config: Config) -> None:
    """Refuse settings that make no sense, so a typo fails at start, not on a request."""
    if config.source not in ("", "kubernetes", "static"):
        raise ValueError(f"source must be 'kubernetes' or 'static', not {config.source!r}")
    if config.source == "static" and not config.static_file:
        raise ValueError("source 'static' needs static_file")
    if config.name_confirmation not in ("connection", "request"):
        raise ValueError("name_confirmation must be 'connection' or 'request', not "
                         f"{config.name_confirmation!r}")
    if config.api_concurrency < 1:
        raise ValueError("api_concurrency must be at least 1")
    for name in ("connect_timeout", "default_timeout", "max_timeout", "keepalive_timeout",
                 "token_reload_seconds", "api_timeout", "wake_timeout", "activity_interval",
                 "client_idle_timeout"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be positive")
    if config.default_timeout > config.max_timeout:
        raise ValueError("default_timeout must not exceed max_timeout")
    if not 0 < config.port < 65536 or not 0 < config.default_port < 65536:
        raise ValueError("ports must be within 1..65535")
    if config.max_body_bytes < 0 or config.buffer_body_bytes < 0 or config.max_connections < 1 \
            or config.max_client_connections < 1:
        raise ValueError("size limits must be non-negative")
