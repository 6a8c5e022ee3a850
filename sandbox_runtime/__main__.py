"""`sandbox-runtime`: serve the runtime app with gunicorn on TCP, or over stdin/stdout.

    sandbox-runtime --port 8888 [--host 0.0.0.0] [--base-dir /app]
    sandbox-runtime --stdio [--base-dir DIR]

The workspace comes from --base-dir, else SANDBOX_RUNTIME_BASE_DIR, else SANDBOX_BASE_DIR,
else /app. Other settings come from SANDBOX_RUNTIME_* (see config.py). Logs go to stderr only.
Run as the console script by a pod's container (image target `runtime`) and the kubelet
stand-in (testbed/kubelet.py); a local sandbox's first process is sandbox_runtime/launch.py,
which serves --stdio itself.

On TCP the port listens before gunicorn, the app or this package's config are imported (they
take most of a start; nothing heavy may be imported above main()): a readiness probe that
arrives meanwhile waits in the listen queue and is answered once the worker is up, instead of
being refused and retried a probe period later (1 s at best on Kubernetes). docs/runtime.md,
"Start-up".
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox_runtime import config as config_mod

BACKLOG = 2048  # gunicorn's default listen queue


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
    listener = None
    if not args.stdio:
        try:
            listener = listen(args.host, args.port)
        except OSError as exc:
            print(f"sandbox-runtime: cannot listen on {args.host}:{args.port}: {exc.strerror}",
                  file=sys.stderr)
            return 1
    from sandbox_runtime import config as config_mod

    overrides: dict[str, Any] = {}
    if args.base_dir:
        overrides["base_dir"] = args.base_dir
    try:
        cfg = config_mod.load(overrides)
    except ValueError as exc:
        print(f"sandbox-runtime: {exc}", file=sys.stderr)
        return 2
    if listener is None:
        from sandbox_runtime import launch
        return launch.serve_stdio(overrides)
    return serve_tcp(overrides, cfg, listener)


def listen(host: str, port: int) -> socket.socket:
    """The TCP listener, as gunicorn would make it (SO_REUSEADDR, its backlog), made first."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


M_ARENA_MAX = -8  # glibc mallopt() parameter number


def bound_malloc() -> None:
    """Keep the workers' RSS flat while large bodies stream through 1 MiB buffers.

    glibc gives each thread that allocates its own arena (up to 8 per core), and each arena
    keeps the 1 MiB buffers it freed: over three 100 MiB uploads plus the 1 MiB ones, a
    worker reached 92 MiB. Two arenas keep it near 40 MiB and were also the fastest variant
    measured (a fixed mmap threshold kept RSS at 36 MiB but made 1 MiB uploads ~2x slower).
    No effect outside glibc.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)


def serve_tcp(overrides: dict[str, Any], cfg: config_mod.Config,
              listener: socket.socket) -> int:
    from gunicorn import sock as gunicorn_sock
    from gunicorn.app.base import BaseApplication

    bound_malloc()  # before the app and the workers exist: they inherit it through fork

    from sandbox_runtime import gunicorn_conf, slots

    workers = cfg.workers or gunicorn_conf.cpu_limit()
    if workers > 1 and not slots.locks_work():
        # The command bound and the metrics' rows are shared through record locks.
        print("sandbox-runtime: no record locks here; serving with one worker", file=sys.stderr)
        workers = 1

    from sandbox_runtime.app import create_app

    ResilientArbiter = _resilient_arbiter()
    host, port = listener.getsockname()[:2]
    options = gunicorn_conf.settings(port, host, cfg.max_concurrent_commands + 16,
                                     cfg.log_level, workers)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # older gunicorn lacks some (control socket)
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(overrides)

        def run(self) -> None:
            arbiter = ResilientArbiter(self)
            # The listener made first: gunicorn takes it over as it would an inherited one.
            kind = gunicorn_sock.TCP6Socket if listener.family == socket.AF_INET6 \
                else gunicorn_sock.TCPSocket
            arbiter.LISTENERS = [kind((host, port), self.cfg, arbiter.log,
                                      fd=listener.detach())]
            arbiter.run()

    Server().run()
    return 0


def _resilient_arbiter() -> type:
    import errno
    import time

    from gunicorn.arbiter import Arbiter

    class ResilientArbiter(Arbiter):  # type: ignore[misc]
        """gunicorn's master, but a failed fork() of a worker is retried on the next turn
        of the main loop instead of stopping the server: a fork bomb in one worker's
        command can fill the pid limit while the master (re)spawns another worker."""

        def spawn_worker(self) -> int | None:
            try:
                return int(super().spawn_worker())
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
                    raise
                worker = getattr(self, "forking_worker", None)
                if worker is not None:
                    worker.tmp.close()
                self.log.warning("cannot fork a worker now (%s); retrying", exc.strerror)
                time.sleep(0.5)
                return None

    return ResilientArbiter


if __name__ == "__main__":
    sys.exit(main())
