"""What every route handler of one server shares: settings, the command bound, the command
keepers and the metrics.

Made once per server by app.create_app() (in gunicorn's master before it forks the workers,
or in the `--stdio` process); read by routes.py and commands.py. It starts no process itself
(the keepers are made per process, on first need or by `prepare_process`) and must not
import Flask, werkzeug or prometheus_client (the `--stdio` start-up imports it).
"""

from __future__ import annotations

import os
import threading

from sandbox_runtime import config as config_mod
from sandbox_runtime import procs, slots
from sandbox_runtime.metrics import Metrics


class Runtime:
    """The shared state of one server (see the module docstring)."""

    def __init__(self, cfg: config_mod.Config, keepers: procs.KeeperPool | None = None) -> None:
        """`keepers`: a pool already started in this process (launch.py starts its first
        keeper before the rest of the runtime is imported)."""
        self.cfg = cfg
        # Both shared by every gunicorn worker forked from the process that made them.
        self.slots = slots.make(cfg.max_concurrent_commands)
        self.metrics = Metrics()
        # Commands see the pod's environment, minus the server's own settings.
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(config_mod.ENV_PREFIX)}
        self._keepers = keepers
        self._lock = threading.Lock()

    @property
    def keepers(self) -> procs.KeeperPool:
        """This process's keepers; made on first need after a fork (gunicorn's workers),
        never shared across processes: a keeper answers only the process that started it."""
        pool = self._keepers
        if pool is None or pool.owner != os.getpid():
            with self._lock:
                pool = self._keepers
                if pool is None or pool.owner != os.getpid():
                    pool = self._keepers = procs.KeeperPool(self.cfg)
        return pool

    def prepare_process(self) -> None:
        """Per-process set-up (a gunicorn worker after its fork): one keeper ready."""
        self.keepers.prewarm()
