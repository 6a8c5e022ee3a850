"""Which backend serves a client, and making it from the client's options.

Called by SandboxClient (agentic_sandbox._client) and the named-sandbox front
(agentic_sandbox._named). choose_backend() is the documented rule (docs/client.md, "Choosing
a backend"): no probing, so it is cheap and predictable. make_backend() imports a backend
only when it is chosen, so `import agentic_sandbox` stays light and a missing optional
dependency matters only to the backend that needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from agentic_sandbox._backends.base import Backend
from agentic_sandbox._options import KubernetesOptions, LocalOptions

__all__ = ["BACKEND_ENV", "choose_backend", "make_backend"]

BACKEND_ENV: Final = "AGENTIC_SANDBOX_BACKEND"
BACKEND_NAMES: Final = ("local", "kubernetes")


def choose_backend(explicit: str | None = None, *, api_url: str | None = None,
                   environ: Mapping[str, str] | None = None,
                   home: Path | None = None) -> Literal["local", "kubernetes"]:
    """Pick the backend by a fixed, documented rule (docs/client.md, "Choosing a backend").

    1. an explicit `backend="local"|"kubernetes"` argument;
    2. else the AGENTIC_SANDBOX_BACKEND environment variable;
    3. else "kubernetes" when `api_url` is given, KUBECONFIG is set, ~/.kube/config exists or
       the process runs in a pod (KUBERNETES_SERVICE_HOST); 4. else "local".
    """
    env = os.environ if environ is None else environ
    for source, value in (("backend=", explicit), (BACKEND_ENV, env.get(BACKEND_ENV))):
        if value and value != "auto":
            if value not in BACKEND_NAMES:
                raise ValueError(f"{source} must be 'local', 'kubernetes' or 'auto', "
                                 f"not {value!r}")
            return value  # type: ignore[return-value]
    home = Path.home() if home is None else home
    if (api_url or env.get("KUBECONFIG") or (home / ".kube" / "config").is_file()
            or env.get("KUBERNETES_SERVICE_HOST")):
        return "kubernetes"
    return "local"


def make_backend(name: Literal["local", "kubernetes"], template_name: str, namespace: str, *,
                 ready_timeout: float, attach: str | None = None,
                 local: LocalOptions | None = None,
                 kubernetes: KubernetesOptions | None = None) -> Backend:
    """The backend `name` for one client: a new sandbox of the template, or (`attach`) the
    named sandbox that already exists and outlives the client."""
    if attach is not None and (not isinstance(attach, str) or not attach):
        raise ValueError("attach must be a non-empty sandbox name")
    local = local or LocalOptions()
    if name == "local" and attach is not None:
        from agentic_sandbox._holder.attach import HeldBackend
        return HeldBackend(attach, state_dir=local.state_dir)
    if name == "local":
        from agentic_sandbox._backends.local import LocalBackend
        return LocalBackend(template_name, namespace, ready_timeout=ready_timeout,
                            options=local)
    from agentic_sandbox._backends.kubernetes import KubernetesBackend
    return KubernetesBackend(template_name, namespace, ready_timeout=ready_timeout,
                             options=kubernetes, claim=attach, attach=attach is not None)
