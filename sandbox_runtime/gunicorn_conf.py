"""gunicorn settings of the runtime, applied by __main__.py (or `-c python:...` by hand).

One threaded worker per CPU the pod may use (the app is GIL-bound; see docs/runtime.md),
with the app preloaded in the master: create_app() runs once, before the fork, so every
worker shares its command slots (slots.py: the concurrency bound stays global to the pod)
and its metrics (metrics.py: one shared row per worker). The worker is
sandbox_common.serving.HeadFirstWorker: idle, kept-alive and half-sent requests wait in the
worker's poller, and a thread serves a connection only once its request head is complete.
Must not import the app or read the workspace.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger

from sandbox_runtime.logs import dict_config


class QuietAccessLogger(_GunicornLogger):
    """gunicorn's logger with the per-request access line off: it costs time on every
    request, and the app logs the commands that matter (timeouts, kills, truncation)."""

    access_log_enabled = False

wsgi_app = "sandbox_runtime.app:create_app()"
bind = ["0.0.0.0:8888"]
MAX_WORKERS = 8


def cpu_limit() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's limit),
    at most MAX_WORKERS. os.cpu_count() would count the node's cores, not the pod's."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quotas = (("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "<quota|max> <period>"
              ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
    for quota_path, period_path in quotas:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(quota_path) as f:
                fields = f.read().split()
            if period_path is not None:
                with open(period_path) as f:
                    fields.append(f.read().strip())
            if fields[0] not in ("max", "-1"):
                count = min(count, max(1, math.ceil(int(fields[0]) / int(fields[1]))))
    return max(1, min(count, MAX_WORKERS))


workers = cpu_limit()
preload_app = True
worker_class = "sandbox_common.serving.HeadFirstWorker"  # gthread, heads read first
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
    same uid), a thread created later could fail to start and take the worker down. Then
    start the worker's first command keeper, off the first command's path."""
    pool = getattr(worker, "tpool", None)
    if pool is None:
        return
    gate = threading.Event()
    try:
        started = [pool.submit(gate.wait) for _ in range(pool._max_workers)]
    except RuntimeError:
        # The pid limit is full (a fork bomb being cleaned up). Exit as a worker that ran,
        # not as one that failed to boot (that would halt the whole server); the master
        # forks a new one later.
        gate.set()
        worker.log.warning("cannot start the worker's threads now; exiting to be replaced")
        time.sleep(1.0)  # at most one replacement a second while the limit stays full
        sys.exit(1)
    gate.set()
    for future in started:
        future.result()
    runtime = getattr(getattr(worker, "wsgi", None), "runtime", None)
    if runtime is not None:
        runtime.prepare_process()  # this worker's first command keeper, started now


def pre_fork(server: Any, worker: Any) -> None:
    """Remember the worker being forked: if fork() fails, __main__'s arbiter closes its
    heartbeat file."""
    server.forking_worker = worker


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its running-commands gauge no longer counts. (The app preloaded in
    the master; without preloading the master has none, and nothing is shared.)"""
    runtime = getattr(getattr(server.app, "callable", None), "runtime", None)
    if runtime is not None:
        runtime.metrics.forget(worker.pid)


def settings(port: int, host: str, threads_: int, log_level: str,
             workers_: int | None = None) -> dict[str, Any]:
    """This module's settings as a dict, for an embedded gunicorn application."""
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers_ or workers,
        "preload_app": preload_app,
        "pre_fork": pre_fork,
        "child_exit": child_exit,
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
