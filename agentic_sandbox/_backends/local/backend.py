"""LocalBackend: the Backend (agentic_sandbox._backends.base) of one local gVisor sandbox.

Made by SandboxClient for backend="local" (or "auto" without a cluster). open() loads the
template, asks the process's manager (agentic_sandbox._backends.local.manager) for a ready
sandbox, from the warm pool when there is one (paused once idle for the idle timeout: the
option's, else the template's; stopped after ten), and returns an Endpoint whose transport
is the sandbox's channel; close() hands the sandbox back to be destroyed. Nothing else here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.channel import CHANNEL_URL
from agentic_sandbox._backends.local.manager import Manager, manager, warm_pool_size
from agentic_sandbox._backends.local.sandbox import LocalSandbox
from agentic_sandbox._options import LocalOptions
from agentic_sandbox._templates import load_template, template_dirs
from sandbox_common.durations import idle_timeout_seconds

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)


class LocalBackend:
    """Backend that opens one local gVisor sandbox (see the module docstring)."""

    name = "local"

    def __init__(self, template_name: str, namespace: str = "default", *,
                 ready_timeout: float = 180.0, options: LocalOptions | None = None) -> None:
        self.template_name = template_name
        self.namespace = namespace  # recorded only: no namespaces on one machine
        self.ready_timeout = ready_timeout
        self.options = options or LocalOptions()
        state_dir = self.options.state_dir
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.sandbox: LocalSandbox | None = None
        self._manager: Manager | None = None

    def open(self) -> Endpoint:
        self._manager = manager(self.state_dir)
        template = load_template(self.template_name, template_dirs(self.options.templates_dir))
        if template.ignored:
            log.debug("template %s: fields that do not apply locally: %s", template.name,
                      ", ".join(template.ignored))
        pool = warm_pool_size(self.options.warm_pool, template)
        idle = idle_timeout_seconds(self.options.idle_timeout)
        self.sandbox = self._manager.acquire(
            template, pool, self.ready_timeout,
            idle_timeout=idle if idle is not None else template.idle_timeout_s)
        return Endpoint(base_url=CHANNEL_URL, transport=self.sandbox.transport,
                        async_transport=self.sandbox.async_transport,
                        sandbox_name=self.sandbox.id,
                        description=f"local gVisor sandbox {self.sandbox.id}")

    def close(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None and self._manager is not None:
            self._manager.release(sandbox)
