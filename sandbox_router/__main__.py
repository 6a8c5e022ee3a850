"""``sandbox-router``: serve the router app on --host/--port until SIGTERM.

The console script named in pyproject.toml and the Dockerfile's ``router`` target. Flags win
over SANDBOX_ROUTER_* environment values; everything else lives in ``config``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys

from aiohttp import web

from sandbox_router import logs
from sandbox_router.app import CONFIG_KEY, create_app


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


def _raise_fd_limit() -> None:
    # Each held client connection may pair with an upstream one: allow the hard limit.
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    _raise_fd_limit()
    logging.getLogger("sandbox_router").info(
        "listening", extra={"host": config.host, "port": config.port})
    web.run_app(app, host=config.host, port=config.port, access_log=None, print=None,
                backlog=1024, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
