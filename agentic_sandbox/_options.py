"""Each backend's options as one typed, frozen object.

SandboxClient takes every option as a keyword (the documented signature) and builds these;
the backends (agentic_sandbox._backends) take them whole, and so does the named-sandbox
front (agentic_sandbox._named, for the command line's options). Values only: reading the
environment and checking combinations is the backend's business when it is chosen, so an
option for the other backend is never an error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["KubernetesOptions", "LocalOptions", "pick"]

OptionsT = TypeVar("OptionsT", "LocalOptions", "KubernetesOptions")


@dataclass(frozen=True)
class LocalOptions:
    """The local gVisor backend's options (docs/client.md, "Local backend")."""

    templates_dir: str | os.PathLike[str] | None = None  # else $AGENTIC_SANDBOX_TEMPLATES
    warm_pool: int | None = None  # else $AGENTIC_SANDBOX_WARM_POOL, else the template's pool
    state_dir: str | os.PathLike[str] | None = None  # else $AGENTIC_SANDBOX_STATE_DIR
    # A duration ("90s") or whole seconds; else the template's spec.idleTimeout
    idle_timeout: str | int | None = None


@dataclass(frozen=True)
class KubernetesOptions:
    """The Kubernetes backend's options (docs/client.md, "Kubernetes backend")."""

    api_url: str | None = None  # a gateway or the router's URL (direct mode)
    connection: str | None = None  # "tunnel", "direct", "in-cluster"; None: chosen
    router_token: str | None = None  # else $AGENTIC_SANDBOX_ROUTER_TOKEN
    kubeconfig: str | os.PathLike[str] | None = None
    context: str | None = None
    router_service: str = "sandbox-router-svc"
    router_namespace: str | None = None  # None: the claim's namespace
    router_port: int = 8080
    server_port: int = 8888  # X-Sandbox-Port: the runtime's port in the pod
    idle_timeout: str | int | None = None  # the claim's spec.idleTimeout (else the template's)


def pick(kind: type[OptionsT], options: Mapping[str, Any]) -> OptionsT:
    """The options of `kind` found by name in a mapping of keyword options (the command
    line's client options); the other names are left alone."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{key: value for key, value in options.items() if key in names})
