"""The runtime's WSGI application: create_app(config) -> App.

Called by gunicorn (`sandbox-runtime --port N`, see __main__.py and gunicorn_conf.py; the
app is built once in the master, which then forks the workers) and by launch.py
(`--stdio`: stdio.py serves the same app over stdin/stdout). It loads the settings, checks
the workspace, makes the shared Runtime and serves routes.py's table through web.py. No
module-level app: the environment is read when the factory runs. It must not import Flask,
werkzeug or prometheus_client (the `--stdio` start-up imports it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from sandbox_runtime import config as config_mod
from sandbox_runtime import procs
from sandbox_runtime.routes import Routes
from sandbox_runtime.runtime import Runtime
from sandbox_runtime.web import Router, WSGIApp

log = logging.getLogger("sandbox_runtime")


class App(WSGIApp):
    """The route table of one Runtime as a WSGI app; `runtime` for gunicorn's hooks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        errors = runtime.metrics.errors
        self.routes = Routes(runtime)
        super().__init__(Router(self.routes.table()),
                         lambda status: errors.labels(str(status)).inc())


def create_app(config: Mapping[str, Any] | config_mod.Config | None = None, *,
               keepers: procs.KeeperPool | None = None) -> App:
    """Defaults, then SANDBOX_RUNTIME_* (and SANDBOX_BASE_DIR), then `config` (or the
    settings `config` already holds, loaded by launch.py).

    `keepers`: a pool this process already started (launch.py's first keeper).
    """
    cfg = config if isinstance(config, config_mod.Config) else config_mod.load(config)
    if not os.path.isdir(cfg.base_dir):
        raise ValueError(f"workspace {cfg.base_dir!r} is not a directory")
    log.info("sandbox-runtime settings %s", config_mod.describe(cfg))
    return App(Runtime(cfg, keepers))
