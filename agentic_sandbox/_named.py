"""Named sandboxes: sandboxes that outlive one call, made and deleted by name.

Called by the command line (agentic_sandbox._cli: `create NAME`, `delete NAME`); using one is
`SandboxClient(..., attach=NAME)` (the client picks the backend that reaches it). On
Kubernetes a named sandbox is a SandboxClaim of that name (KubernetesBackend's `claim=`,
`attach=`, `release()`, `delete()`); on the local backend there is no cluster to keep it
between two processes, so a small detached holder process per name keeps it
(agentic_sandbox._holder). This module picks the backend and checks the name; it must not
know how either backend keeps a sandbox.
"""

from __future__ import annotations

import re
from typing import Any, Final

from agentic_sandbox._backends.choice import choose_backend
from agentic_sandbox._options import KubernetesOptions, LocalOptions, pick

__all__ = ["DEFAULT_TEMPLATE", "create", "delete", "validate_name"]

DEFAULT_TEMPLATE: Final = "python-runtime-template"
# A Kubernetes object name (DNS-1123 label), on both backends: the same name works on both,
# and locally it is a file name that cannot climb out of its folder.
NAME_PATTERN: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def validate_name(name: str) -> str:
    """The name itself, or ValueError saying what a sandbox name may be."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid sandbox name {name!r}: use 1-63 lowercase letters, digits "
                         "and '-', starting and ending with a letter or digit")
    return name


def _kubernetes(name: str, template: str, namespace: str, ready_timeout: float,
                options: dict[str, Any], *, attach: bool) -> Any:
    from agentic_sandbox._backends.kubernetes import KubernetesBackend

    return KubernetesBackend(template, namespace, ready_timeout=ready_timeout, claim=name,
                             attach=attach, options=pick(KubernetesOptions, options))


def create(name: str, *, template: str = DEFAULT_TEMPLATE, namespace: str = "default",
           backend: str = "auto", ready_timeout: float = 180.0, **options: Any) -> str:
    """Make a sandbox called `name` and leave it running; returns its sandbox's name or id.

    Raises ClaimFailedError (reason AlreadyExists) when the name is taken, and whatever
    SandboxClient's enter would raise when the sandbox cannot be made.
    """
    validate_name(name)
    if choose_backend(backend, api_url=options.get("api_url")) == "local":
        from agentic_sandbox._holder import control
        local = pick(LocalOptions, options)
        return control.spawn(name, template=template, namespace=namespace,
                             state_dir=local.state_dir, ready_timeout=ready_timeout,
                             idle_timeout=local.idle_timeout)
    kube = _kubernetes(name, template, namespace, ready_timeout, options, attach=False)
    try:
        endpoint = kube.open()
        kube.release()  # from here on the claim is the caller's: close() keeps it
    finally:
        kube.close()
    return str(endpoint.sandbox_name)


def delete(name: str, *, namespace: str = "default", backend: str = "auto",
           **options: Any) -> None:
    """Delete the sandbox called `name`; ClaimFailedError (reason NotFound) if none exists."""
    validate_name(name)
    if choose_backend(backend, api_url=options.get("api_url")) == "local":
        from agentic_sandbox._holder import control
        control.stop(name, state_dir=pick(LocalOptions, options).state_dir)
        return
    _kubernetes(name, DEFAULT_TEMPLATE, namespace, 60.0, options, attach=True).delete()
