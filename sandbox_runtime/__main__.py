"""`sandbox-runtime`: serve the runtime app with gunicorn on TCP, or over stdin/stdout.

    sandbox-runtime --port 8888 [--host 0.0.0.0] [--base-dir /app]
    sandbox-runtime --stdio [--base-dir DIR]

The workspace comes from --base-dir, else SANDBOX_RUNTIME_BASE_DIR, else SANDBOX_BASE_DIR,
else /app. Other settings come from SANDBOX_RUNTIME_* (see config.py). Logs go to stderr only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from sandbox_runtime import config as config_mod


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sandbox-runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8888, help="TCP port (default 8888)")
    parser.add_argument("--host", default="0.0.0.0",  # a pod serves on its own IP
                        help="address to bind (default 0.0.0.0; tests use 127.0.0.1)")
    parser.add_argument("--base-dir", help="workspace directory (default $SANDBOX_BASE_DIR "
                        "or /app)")
    parser.add_argument("--stdio", action="store_true",
                        help="serve HTTP/1.1 over stdin/stdout instead of TCP (see stdio.py)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.base_dir:
        overrides["base_dir"] = args.base_dir
    try:
        cfg = config_mod.load(overrides)
    except ValueError as exc:
        print(f"sandbox-runtime: {exc}", file=sys.stderr)
        return 2
    if args.stdio:
        from sandbox_runtime import stdio
        return stdio.main(overrides, cfg.log_level)
    return serve_tcp(overrides, cfg, args.host, args.port)


def serve_tcp(overrides: dict[str, Any], cfg: config_mod.Config, host: str, port: int) -> int:
    from gunicorn.app.base import BaseApplication

    from sandbox_runtime import gunicorn_conf
    from sandbox_runtime.app import create_app

    options = gunicorn_conf.settings(port, host, cfg.max_concurrent_commands + 16,
                                     cfg.log_level)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # older gunicorn lacks some (control socket)
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(overrides)

    Server().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
