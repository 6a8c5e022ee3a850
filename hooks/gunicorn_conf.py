"""gunicorn settings for the hook server, loaded as `-c python:hooks.gunicorn_conf`.

gunicorn reads the environment, then this file, then GUNICORN_CMD_ARGS, then the command
line, so `sandbox-hooks --bind 127.0.0.1:9000` overrides anything here.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import tempfile
from typing import Any

wsgi_app = "hooks.app:create_app()"
bind = os.environ.get("SANDBOX_HOOKS_BIND", "0.0.0.0:8080")
# Hooks are CPU-bound and short: one process per core, a few threads to overlap I/O.
workers = int(os.environ.get("SANDBOX_HOOKS_WORKERS", os.cpu_count() or 2))
threads = int(os.environ.get("SANDBOX_HOOKS_THREADS", 4))
# gthread, but a thread only takes a connection once its request head is complete, and
# gunicorn's own errors are JSON (sandbox_common/serving.py).
worker_class = "sandbox_common.serving.HeadFirstWorker"
keepalive = 75  # Metacontroller reuses connections; outlive its idle timeout
timeout = 30
graceful_timeout = 10
max_requests = 0
limit_request_line = 8190
accesslog = os.environ.get("SANDBOX_HOOKS_ACCESS_LOG", "-") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'

# Every worker counts into its own files; /metrics adds them up (prometheus_client multiprocess).
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sandbox-hooks-metrics-")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self.STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonFormatter}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
    },
}


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_fork(server: Any, worker: Any) -> None:
    keep_large_blocks_out_of_the_heap()


def keep_large_blocks_out_of_the_heap() -> None:
    """Have glibc map every block over 4 MiB on its own and unmap it when freed.

    Its default threshold rises to the largest block freed so far (up to 32 MiB): after one
    20 MiB spec, later ones (their body, parsed text, canonical form, answer) come from the
    heap, and a heap that fragmented keeps them resident (tests/http/test_hooks_memory.py:
    150 MiB without this, about 40 MiB with it). 4 MiB keeps a 1,000-pod pool's sync (2.6 MB)
    in the heap, as fast as before; 256 KiB made it a quarter slower.
    """
    threshold = int(os.environ.get("SANDBOX_HOOKS_MMAP_THRESHOLD", 4 * 1024 * 1024))
    if threshold <= 0:
        return  # glibc's own behaviour
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, threshold)
