"""``sandbox-router``: serve the router app on --host/--port until SIGTERM.

The console script named in pyproject.toml and the Dockerfile's ``router`` target. Flags win
over SANDBOX_ROUTER_* environment values; everything else lives in ``config``. ``serve``
installs the connection bounds (``connections.ConnectionGuard``, the idle timeout) on the
server, which ``web.run_app`` gives no access to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys

from aiohttp import web

from sandbox_router import logs
from sandbox_router.app import CONFIG_KEY, GUARD_KEY, create_app
from sandbox_router.connections import descriptor_budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sandbox-router", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="listen port (default 8080)")
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--static-file", help="YAML/JSON file of sandboxes (static source)")
    parser.add_argument("--source", choices=("kubernetes", "static"))
    parser.add_argument("--token-file", help="file holding the bearer token (a mounted Secret)")
    parser.add_argument("--namespace", action="append", dest="namespaces",
                        help="watch only this namespace (repeatable; default all)")
    parser.add_argument("--allow-loopback-pods", action="store_true", default=None,
                        help="Kubernetes source: accept loopback pod IPs (pods that are local "
                             "processes, as in the test tier); never in a cluster")
    parser.add_argument("--name-confirmation", choices=("connection", "request"),
                        help="Kubernetes source, requests without X-Sandbox-UID: confirm the "
                             "name's uid with the API server on every request (default), or "
                             "once per client connection (cheaper; a connection re-used "
                             "across a re-creation of the name can reach the old pod: "
                             "docs/router.md)")
    parser.add_argument("--insecure-no-auth", action="store_true", default=None,
                        help="start without a bearer token: anyone reaching the port may use it")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        default=None, help="do not log one line per forwarded request")
    return parser.parse_args(argv)


def _raise_fd_limit() -> int:
    """Raise the descriptor limit to the hard one (each held client connection may pair with
    an upstream one); return the limit in force."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


async def serve(app: web.Application, nofile: int) -> None:
    """Serve `app` until SIGTERM or SIGINT, with its connection guard installed."""
    config, guard = app[CONFIG_KEY], app[GUARD_KEY]
    guard.limit, backlog = descriptor_budget(config.max_client_connections, nofile)
    if guard.limit < config.max_client_connections:
        logging.getLogger("sandbox_router").warning(
            "max_client_connections lowered to fit the descriptor limit",
            extra={"max_client_connections": guard.limit, "nofile": nofile})
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=config.client_idle_timeout)
    await runner.setup()
    assert runner.server is not None
    guard.install(runner.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, config.host, config.port, backlog=backlog).start()
        logging.getLogger("sandbox_router").info(
            "listening", extra={"host": config.host, "port": config.port,
                                "max_client_connections": guard.limit})
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    logs.configure(overrides.get("log_level", "INFO"))
    try:
        app = create_app(overrides)
    except (ValueError, OSError) as exc:
        logging.getLogger("sandbox_router").error("cannot start", extra={"error": str(exc)})
        print(f"sandbox-router: {exc}", file=sys.stderr)
        return 2
    config = app[CONFIG_KEY]
    logging.getLogger().setLevel(config.log_level.upper())
    asyncio.run(serve(app, _raise_fd_limit()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
