"""The Kubernetes backend: a SandboxClaim per sandbox, reached through the sandbox router.

Called by SandboxClient (backend="kubernetes", or "auto" when a cluster is configured).
open(): check the SandboxTemplate exists, create a SandboxClaim
(extensions.agents.x-k8s.io/v1alpha1, `spec.sandboxTemplateRef.name`) with a unique name,
watch it until Ready (a terminal Ready=False reason fails at once), read the Sandbox's name
from `status.sandbox.name` (it equals the claim's) and its uid from the Sandbox itself
(checking that the claim owns it), open the connection to the router and check the runtime
answers through it. Named sandboxes (the command line's `create NAME`,
`exec NAME`, `delete NAME`; SandboxClient(attach=NAME)): `claim=` names the claim instead of
a random name, `attach=True` uses an existing claim (never created, never deleted here),
release() hands a created claim over to the caller, delete() removes a claim by name.
Connection modes: a `kubectl port-forward` tunnel to
the router Service on a free loopback port (the default: two clients never collide), a
direct or gateway `api_url`, or the router Service's in-cluster DNS name. Every request
carries X-Sandbox-ID / X-Sandbox-Namespace / X-Sandbox-Port, X-Sandbox-UID (so the router
never forwards to another Sandbox that held or will hold the same name), and the router's
bearer token when one is configured. close() (and any failure after the claim exists)
deletes the claim and closes the tunnel. The calls on the claim itself (create, find, judge,
watch until Ready within ready_timeout, the Sandbox's uid, delete) are claims.py; the way to
the router is router.py. The `kubernetes` package is imported lazily: it is an extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

from agentic_sandbox._backends import claims
from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.claims import TERMINAL_CLAIM_READY_REASONS
from agentic_sandbox._backends.router import (
    TOKEN_ENV,
    Tunnel,
    router_async_transport,
    router_transport,
    tls_context,
    tunnel_argv,
    wait_routable,
)
from agentic_sandbox._exceptions import BackendUnavailableError, ClaimFailedError, SandboxError
from agentic_sandbox._options import KubernetesOptions
from sandbox_common import contract
from sandbox_common.durations import idle_timeout_seconds

__all__ = ["TERMINAL_CLAIM_READY_REASONS", "KubernetesBackend"]

log = logging.getLogger(__name__)

CONNECTIONS: Final = ("tunnel", "direct", "in-cluster")
TUNNEL_TIMEOUT_S: Final = 30.0


class KubernetesBackend:
    """Backend that claims a sandbox from the cluster (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, template_name: str, namespace: str = "default", *,
                 ready_timeout: float = 180.0, options: KubernetesOptions | None = None,
                 api_client: Any = None, claim: str | None = None,
                 attach: bool = False) -> None:
        given = options or KubernetesOptions()
        connection = given.connection
        if connection is None:
            connection = "direct" if given.api_url else (
                "in-cluster" if _in_cluster() and not given.kubeconfig else "tunnel")
        if connection not in CONNECTIONS:
            raise ValueError(f"connection must be one of {', '.join(CONNECTIONS)}, "
                             f"not {connection!r}")
        if connection == "direct" and not given.api_url:
            raise ValueError("connection='direct' needs api_url=")
        if attach and not claim:
            raise ValueError("attach=True needs claim= (the SandboxClaim's name)")
        self.template_name = template_name
        self.namespace = namespace
        self.ready_timeout = ready_timeout
        # The options as used: defaults chosen, the token read from the environment.
        self.options = dataclasses.replace(
            given, api_url=given.api_url.rstrip("/") if given.api_url else None,
            connection=connection,
            router_token=given.router_token if given.router_token is not None
            else os.environ.get(TOKEN_ENV),
            kubeconfig=str(given.kubeconfig) if given.kubeconfig is not None else None,
            router_namespace=given.router_namespace or namespace)
        self.claim: str | None = None
        self.claim_uid: str | None = None
        self.sandbox: str | None = None
        self.sandbox_uid: str | None = None
        # Named sandboxes: a claim owned by the caller is never deleted here.
        self.claim_name = claim
        self.attach = attach
        self._owns_claim = not attach
        self._api_client = api_client
        self._own_client = api_client is None
        self._tunnel: Tunnel | None = None

    # -- Kubernetes API ---------------------------------------------------------------------

    def _custom(self) -> Any:
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise BackendUnavailableError(
                "the kubernetes backend needs the kubernetes package: "
                "pip install 'agent-sandbox[kubernetes]'") from exc
        if self._api_client is None:
            try:
                opts = self.options
                if opts.kubeconfig is None and opts.context is None and _in_cluster():
                    config.load_incluster_config()
                    self._api_client = client.ApiClient()
                else:
                    self._api_client = config.new_client_from_config(
                        config_file=self.options.kubeconfig, context=self.options.context)
            except (config.ConfigException, OSError) as exc:
                raise BackendUnavailableError(
                    f"no usable Kubernetes configuration ({exc}); set KUBECONFIG, or use "
                    "backend='local' / AGENTIC_SANDBOX_BACKEND=local") from exc
        return client.CustomObjectsApi(self._api_client)

    def _delete(self, name: str) -> bool:
        return claims.delete(self._custom(), self.namespace, name)

    def _delete_claim(self) -> None:
        name, self.claim = self.claim, None
        if name is None or not self._owns_claim:
            return
        try:
            self._delete(name)
        except Exception as exc:  # close() must not raise over the caller's own error
            log.warning("could not delete SandboxClaim %s/%s: %s", self.namespace, name,
                        getattr(exc, "status", None) or exc)

    def release(self) -> str | None:
        """Hand the claim over to the caller: close() will no longer delete it (the command
        line's `create NAME`). Returns its name."""
        self._owns_claim = False
        return self.claim

    def delete(self) -> None:
        """Delete the claim named by `claim=` now (`agentic-sandbox delete NAME`).

        Raises ClaimFailedError (reason NotFound) when there is no such claim, and
        SandboxConnectionError when the API cannot be reached or refuses."""
        name = self.claim_name
        if not name:
            raise ValueError("delete() needs claim= (the SandboxClaim's name)")
        try:
            found = self._delete(name)
        except SandboxError:
            raise
        except Exception as exc:
            raise claims.api_error(exc, "deleting the SandboxClaim") from exc
        finally:
            self.close()
        if not found:
            raise ClaimFailedError(f"no sandbox named {name!r} in namespace {self.namespace!r}",
                                   reason="NotFound", claim=name)

    # -- the router -------------------------------------------------------------------------

    def _base_url(self, deadline: float) -> str:
        opts = self.options
        if opts.connection == "direct":
            assert opts.api_url is not None
            return opts.api_url
        if opts.connection == "in-cluster":
            return (f"http://{opts.router_service}.{opts.router_namespace}.svc.cluster.local:"
                    f"{opts.router_port}")
        self._tunnel = Tunnel(tunnel_argv(opts))
        port = self._tunnel.open(min(TUNNEL_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
        return f"http://127.0.0.1:{port}"

    def headers(self) -> dict[str, str]:
        headers = {contract.SANDBOX_ID_HEADER: self.sandbox or "",
                   contract.SANDBOX_NAMESPACE_HEADER: self.namespace,
                   contract.SANDBOX_PORT_HEADER: str(self.options.server_port)}
        if self.sandbox_uid:
            headers[contract.SANDBOX_UID_HEADER] = self.sandbox_uid
        if self.options.router_token:
            headers["Authorization"] = f"Bearer {self.options.router_token}"
        return headers

    # -- Backend ----------------------------------------------------------------------------

    def open(self) -> Endpoint:
        deadline = time.monotonic() + self.ready_timeout
        api = self._custom()
        if self.attach:
            assert self.claim_name is not None
            name = self.claim_name
            found = claims.find(api, self.namespace, name)
        else:
            claims.check_template(api, self.namespace, self.template_name)
            name = self.claim_name or claims.claim_name()
            found = claims.create(api, self.namespace, name, self.template_name,
                                  idle_timeout_seconds(self.options.idle_timeout))
        # Only now is the claim ours to wait for (and, unless attached, to delete on close).
        self.claim, self.claim_uid = name, claims.uid_of(found)
        try:
            # An attached claim may be Ready already: a watch from its version would wait
            # for a change that never comes.
            self.sandbox = claims.judge(found, self.namespace, self.claim)
            if self.sandbox is None:
                self.sandbox = claims.wait_ready(api, self.namespace, self.claim,
                                                 claims.version_of(found), deadline,
                                                 self.ready_timeout)
            self.sandbox_uid = claims.sandbox_uid(api, self.namespace, self.sandbox,
                                                  self.claim, self.claim_uid)
            base_url = self._base_url(deadline)
            context = tls_context(base_url)
            transport = router_transport(base_url, context)
            try:
                wait_routable(transport, base_url, self.headers(), deadline,
                              f"{self.namespace}/{self.sandbox}", self.claim)
            except BaseException:
                transport.close()
                raise
        except BaseException:
            self.close()
            raise
        return Endpoint(base_url=base_url, transport=transport,
                        async_transport=router_async_transport(base_url, context),
                        headers=self.headers(),
                        sandbox_name=self.sandbox,
                        description=f"sandbox {self.namespace}/{self.sandbox} via {base_url}")

    def close(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        try:
            self._delete_claim()
        finally:
            if tunnel is not None:
                tunnel.close()
            if self._own_client and self._api_client is not None:
                with contextlib.suppress(Exception):
                    self._api_client.close()
                self._api_client = None


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(
        "/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()
