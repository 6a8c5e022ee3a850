"""gunicorn settings of the runtime, applied by __main__.py (or `-c python:...` by hand).

One gthread worker: the concurrency bound on commands is then global to the pod, and the
threads serve many keep-alive connections at once (idle ones wait in the worker's poller,
not in a thread). Must not import the app or read the workspace.
"""

from __future__ import annotations

import threading
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger

from sandbox_runtime.logs import dict_config


class QuietAccessLogger(_GunicornLogger):
    """gunicorn's logger with the per-request access line off: it costs time on every
    request, and the app logs the commands that matter (timeouts, kills, truncation)."""

    access_log_enabled = False

wsgi_app = "sandbox_runtime.app:create_app()"
bind = ["0.0.0.0:8888"]
workers = 1
worker_class = "gthread"
threads = 48  # __main__ sets max_concurrent_commands + 16
worker_connections = 1000
keepalive = 75  # seconds; longer than typical client pools keep idle connections
timeout = 30  # heartbeat of the worker's main loop, not a request limit
graceful_timeout = 5
accesslog = None  # one line per command is logged by the app when it matters
errorlog = "-"
logconfig_dict = dict_config()
logger_class = QuietAccessLogger
# gunicorn >= 25 opens a control socket by default; commands run as our uid could use it.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Start every pool thread now: under a process-count rlimit (a fork bomb running as the
    same uid), a thread created later could fail to start and take the worker down."""
    pool = getattr(worker, "tpool", None)
    if pool is None:
        return
    gate = threading.Event()
    started = [pool.submit(gate.wait) for _ in range(pool._max_workers)]
    gate.set()
    for future in started:
        future.result()


def settings(port: int, host: str, threads_: int, log_level: str) -> dict[str, Any]:
    """This module's settings as a dict, for an embedded gunicorn application."""
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": worker_class,
        "threads": threads_,
        "worker_connections": worker_connections,
        "keepalive": keepalive,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "accesslog": accesslog,
        "errorlog": errorlog,
        "logconfig_dict": dict_config(log_level),
        "post_worker_init": post_worker_init,
        "logger_class": logger_class,
        "control_socket_disable": control_socket_disable,
        "proc_name": "sandbox-runtime",
    }
