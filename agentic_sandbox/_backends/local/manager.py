"""The local backend's process-wide manager and its warm pools.

LocalBackend (agentic_sandbox._backends.local.backend) asks manager(state_dir) for a sandbox:
one Manager per state folder and process starts sandboxes, hands out a warm pool's spare when
the template has one (the warm-pool binding: Manager.acquire), removes every sandbox of this
process at interpreter exit, and cleans up after dead owners once, when it is made. A
WarmPool keeps N spare, ready sandboxes of one template, refilled in the background. Its
IdleWatcher (agentic_sandbox._backends.local.idle) pauses handed-out sandboxes left idle,
and stops those left idle for long.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Final

from agentic_sandbox._backends.local.idle import IdleWatcher
from agentic_sandbox._backends.local.launch import compile_runtime
from agentic_sandbox._backends.local.runsc import (
    PLATFORM_ENV,
    RUNSC_TIMEOUT_S,
    default_state_dir,
    private_state,
    runsc_binary,
)
from agentic_sandbox._backends.local.sandbox import LocalSandbox
from agentic_sandbox._backends.local.spec import ROOT_DIR, prepare_root
from agentic_sandbox._backends.local.stale import clean_stale
from agentic_sandbox._exceptions import BackendUnavailableError, SandboxConnectionError
from agentic_sandbox._templates import LocalTemplate

__all__ = ["WARM_POOL_ENV", "Manager", "WarmPool", "manager", "warm_pool_size"]

log = logging.getLogger(__name__)

WARM_POOL_ENV: Final = "AGENTIC_SANDBOX_WARM_POOL"
MAX_WARM_POOL: Final = 8
REFILL_DELAY_S: Final = 0.5


class WarmPool:
    """Spare ready sandboxes of one template, refilled in the background."""

    def __init__(self, manager: Manager, template: LocalTemplate, size: int,
                 ready_timeout: float) -> None:
        self.manager = manager
        self.template = template
        self.size = size
        self.ready_timeout = ready_timeout
        self.ready: deque[LocalSandbox] = deque()
        self.wake = threading.Event()
        self.filled = threading.Condition()
        self.thread = threading.Thread(target=self._fill, name=f"sandbox-pool-{template.name}",
                                       daemon=True)
        self.thread.start()

    def take(self) -> LocalSandbox | None:
        with self.filled:
            sandbox = self.ready.popleft() if self.ready else None
        self.wake.set()
        return sandbox

    def wait_full(self, timeout: float) -> bool:
        """For tests and benchmarks: block until the pool holds `size` sandboxes."""
        deadline = time.monotonic() + timeout
        with self.filled:
            while len(self.ready) < self.size:
                left = deadline - time.monotonic()
                if left <= 0 or not self.filled.wait(left):
                    return len(self.ready) >= self.size
        return True

    def _fill(self) -> None:
        failures = 0
        while not self.manager.closing:
            if len(self.ready) >= self.size:
                self.wake.wait()
                self.wake.clear()
                # Let the sandbox just handed out run its first commands before a new
                # sandbox's start-up competes for the CPU (small machines).
                time.sleep(REFILL_DELAY_S)
                continue
            try:
                sandbox = self.manager.start_sandbox(self.template, self.ready_timeout,
                                                     warm_up=True)
            except Exception as exc:
                failures += 1
                log.warning("warm pool %s: could not start a sandbox: %s", self.template.name,
                            exc)
                if self.manager.closing or failures >= 3:
                    return  # the caller's own cold start reports the problem clearly
                time.sleep(1.0)
                continue
            failures = 0
            with self.filled:
                if self.manager.closing:
                    self.manager.release(sandbox)
                    return
                self.ready.append(sandbox)
                self.filled.notify_all()

    def drain(self) -> list[LocalSandbox]:
        self.wake.set()
        with self.filled:
            drained = list(self.ready)
            self.ready.clear()
        return drained


class Manager:
    """All local sandboxes of this process under one state folder; removes them at exit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runsc = runsc_binary()
        self.platform = os.environ.get(PLATFORM_ENV, "ptrace")
        self.live: dict[str, LocalSandbox] = {}
        self.pools: dict[LocalTemplate, WarmPool] = {}
        self.lock = threading.Lock()
        self.closing = False
        self.idle = IdleWatcher(state_dir.name)
        self.cgroups = True
        private_state(state_dir, "runsc", "sandboxes", "workspaces", ROOT_DIR)
        prepare_root(state_dir)
        compile_runtime()
        clean_stale(state_dir, self.runsc)
        atexit.register(self.shutdown)

    def start_sandbox(self, template: LocalTemplate, ready_timeout: float, *,
                      warm_up: bool = False) -> LocalSandbox:
        sandbox = LocalSandbox(template, self.state_dir, self.runsc, self.platform)
        with self.lock:
            if self.closing:
                raise SandboxConnectionError("the interpreter is shutting down")
            self.live[sandbox.id] = sandbox
        try:
            try:
                sandbox.ready_timeout = ready_timeout
                sandbox.start(cgroups=self.cgroups)
                sandbox.wait_ready(ready_timeout, warm_up=warm_up)
                sandbox.bound_cpu()
            except BackendUnavailableError:
                if not self.cgroups or "cgroup" not in sandbox.log_tail().lower():
                    raise
                # No writable cgroup hierarchy here (e.g. a nested container): resource
                # limits cannot apply; isolation does not depend on them.
                log.warning("runsc cannot create cgroups here; local sandboxes run without "
                            "CPU/memory limits: %s", sandbox.log_tail(300))
                self.cgroups = False
                sandbox.destroy()
                self.live.pop(sandbox.id, None)
                return self.start_sandbox(template, ready_timeout, warm_up=warm_up)
        except BaseException:
            self.release(sandbox)
            raise
        return sandbox

    def acquire(self, template: LocalTemplate, warm_pool: int, ready_timeout: float,
                idle_timeout: float | None = None) -> LocalSandbox:
        """A ready sandbox: from the template's warm pool when it has one, else a cold start.
        With an idle timeout, it is paused after that long without a request (spares in a
        pool never are: they wait for a client, not on one)."""
        pool = self.pool(template, warm_pool, ready_timeout) if warm_pool > 0 else None
        sandbox = pool.take() if pool is not None else None
        if sandbox is None:
            sandbox = self.start_sandbox(template, ready_timeout)
        self.idle.watch(sandbox.activity, idle_timeout)
        return sandbox

    def pool(self, template: LocalTemplate, size: int, ready_timeout: float) -> WarmPool:
        with self.lock:
            pool = self.pools.get(template)
            if pool is None:
                pool = self.pools[template] = WarmPool(self, template, min(size, MAX_WARM_POOL),
                                                    ready_timeout)
            elif size > pool.size:
                pool.size = min(size, MAX_WARM_POOL)
                pool.wake.set()
            return pool

    def release(self, sandbox: LocalSandbox) -> None:
        with self.lock:
            self.live.pop(sandbox.id, None)
        self.idle.forget(sandbox.activity)
        sandbox.destroy()

    def shutdown(self) -> None:
        """Remove every sandbox of this process (atexit)."""
        with self.lock:
            self.closing = True
            pools = list(self.pools.values())
        self.idle.stop()
        for pool in pools:
            pool.drain()
            pool.thread.join(timeout=RUNSC_TIMEOUT_S)
        with self.lock:
            sandboxes = list(self.live.values())
            self.live.clear()
        for sandbox in sandboxes:
            sandbox.destroy()


_managers: dict[Path, Manager] = {}
_managers_lock = threading.Lock()


def manager(state_dir: Path | None = None) -> Manager:
    """The process's manager for a state folder (created, and stale sandboxes cleaned, once)."""
    path = (state_dir or default_state_dir()).expanduser().resolve()
    with _managers_lock:
        found = _managers.get(path)
        if found is None or found.closing:
            found = _managers[path] = Manager(path)
        return found


def warm_pool_size(option: int | None, template: LocalTemplate) -> int:
    if option is not None:
        size = option
    elif os.environ.get(WARM_POOL_ENV):
        size = int(os.environ[WARM_POOL_ENV])
    else:
        size = template.warm_pool
    if size < 0:
        raise ValueError(f"warm_pool must be >= 0, not {size}")
    return size
