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
deletes the claim and closes the tunnel. The `kubernetes` package is imported lazily: it is
an extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.router import (
    TOKEN_ENV,
    Tunnel,
    router_transport,
    tunnel_argv,
    wait_routable,
)
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    ClaimFailedError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from agentic_sandbox._options import KubernetesOptions

__all__ = ["CLAIM_PLURAL", "TERMINAL_CLAIM_READY_REASONS", "KubernetesBackend"]

log = logging.getLogger(__name__)

GROUP: Final = "extensions.agents.x-k8s.io"
VERSION: Final = "v1alpha1"
CLAIM_PLURAL: Final = "sandboxclaims"
SANDBOX_GROUP: Final = "agents.x-k8s.io"
SANDBOX_PLURAL: Final = "sandboxes"
TEMPLATE_PLURAL: Final = "sandboxtemplates"
READY: Final = "Ready"
# Ready=False reasons that will not fix themselves: waiting on them would only burn the
# timeout (upstream's TERMINAL_CLAIM_READY_REASONS). Spelled as the hooks spell them.
TERMINAL_CLAIM_READY_REASONS: Final = frozenset(
    {"TemplateNotFound", "InvalidSpec", "WarmPoolNotFound", "Expired", "SandboxExpired",
     "PodLost"})
CONNECTIONS: Final = ("tunnel", "direct", "in-cluster")
TUNNEL_TIMEOUT_S: Final = 30.0


def claim_name() -> str:
    """A fresh DNS-1123 label: the claim's and therefore the Sandbox's name."""
    return f"sandbox-claim-{secrets.token_hex(4)}"


def ready_condition(claim: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (claim.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == READY:
            return condition
    return None


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

    def _api_error(self, exc: Exception, what: str) -> SandboxError:
        status = getattr(exc, "status", None)
        if status is None or status == 0:
            return SandboxConnectionError(f"{what}: the Kubernetes API is unreachable: {exc}")
        reason = getattr(exc, "reason", "") or ""
        return SandboxConnectionError(f"{what}: Kubernetes API answered {status} {reason}")

    def _check_template(self, api: Any) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, TEMPLATE_PLURAL,
                                             self.template_name)
        except ApiException as exc:
            if exc.status == 404:
                raise TemplateNotFoundError(
                    f"SandboxTemplate {self.template_name!r} does not exist in namespace "
                    f"{self.namespace!r}", reason="TemplateNotFound") from exc
            if exc.status == 403:
                return  # may not read templates: the claim's status will say it
            raise self._api_error(exc, "reading the SandboxTemplate") from exc
        except Exception as exc:
            raise self._api_error(exc, "reading the SandboxTemplate") from exc

    def _create_claim(self, api: Any) -> str:
        from kubernetes.client.exceptions import ApiException
        name = self.claim_name or claim_name()
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SandboxClaim",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "agentic-sandbox"}},
                "spec": {"sandboxTemplateRef": {"name": self.template_name}}}
        try:
            created = api.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                          CLAIM_PLURAL, body)
        except ApiException as exc:
            if exc.status == 422:
                raise ClaimFailedError(f"the API server rejected the SandboxClaim: {exc.body}",
                                       reason="Invalid", claim=name) from exc
            if exc.status == 409:
                raise ClaimFailedError(
                    f"a SandboxClaim named {name!r} already exists in namespace "
                    f"{self.namespace!r}", reason="AlreadyExists", claim=name) from exc
            raise self._api_error(exc, "creating the SandboxClaim") from exc
        except Exception as exc:
            raise self._api_error(exc, "creating the SandboxClaim") from exc
        self.claim = name
        self.claim_uid = str((created.get("metadata") or {}).get("uid") or "") or None
        log.info("created SandboxClaim %s/%s for template %s", self.namespace, name,
                 self.template_name)
        return str(created.get("metadata", {}).get("resourceVersion", ""))

    def _judge(self, claim: dict[str, Any]) -> str | None:
        """The sandbox name when Ready; raise on a terminal reason; None to keep waiting."""
        condition = ready_condition(claim)
        if condition is None:
            return None
        if condition.get("status") == "True":
            sandbox = ((claim.get("status") or {}).get("sandbox") or {}).get("name")
            return str(sandbox or self.claim)
        reason = str(condition.get("reason") or "")
        if reason in TERMINAL_CLAIM_READY_REASONS:
            message = (f"SandboxClaim {self.namespace}/{self.claim} failed: {reason}: "
                       f"{condition.get('message', '')}")
            error = TemplateNotFoundError if reason == "TemplateNotFound" else ClaimFailedError
            raise error(message, reason=reason, claim=self.claim or "")
        return None

    def _wait_ready(self, api: Any, resource_version: str, deadline: float) -> str:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        last: dict[str, Any] = {}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                condition = ready_condition(last) or {}
                raise SandboxTimeoutError(
                    f"SandboxClaim {self.namespace}/{self.claim} not Ready after "
                    f"{self.ready_timeout:.0f} s (last reason: "
                    f"{condition.get('reason', 'none')}: {condition.get('message', '')})")
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                        api.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                        CLAIM_PLURAL, field_selector=f"metadata.name={self.claim}",
                        resource_version=resource_version or None,
                        timeout_seconds=max(1, int(min(left, 60))),
                        _request_timeout=min(left, 60) + 5):
                    obj = event.get("object") or {}
                    if event.get("type") == "DELETED":
                        raise ClaimFailedError(
                            f"SandboxClaim {self.namespace}/{self.claim} was deleted while "
                            "waiting for it", reason="Deleted", claim=self.claim or "")
                    if event.get("type") == "ERROR":
                        resource_version = ""  # 410 Gone: start again from a fresh list
                        break
                    last = obj
                    resource_version = str(obj.get("metadata", {}).get("resourceVersion", ""))
                    name = self._judge(obj)
                    if name is not None:
                        return name
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = ""
                    continue
                raise self._api_error(exc, "watching the SandboxClaim") from exc
            except SandboxError:
                raise
            except Exception as exc:
                if time.monotonic() >= deadline:
                    continue
                log.debug("claim watch interrupted (%s); watching again", exc)
                time.sleep(0.2)
            finally:
                watcher.stop()
            if not resource_version:
                # Relist: the current object decides, then watch from its version.
                try:
                    obj = api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                           CLAIM_PLURAL, self.claim)
                except ApiException as exc:
                    raise self._api_error(exc, "reading the SandboxClaim") from exc
                last = obj
                resource_version = str(obj.get("metadata", {}).get("resourceVersion", ""))
                name = self._judge(obj)
                if name is not None:
                    return name

    def _find_claim(self, api: Any) -> dict[str, Any]:
        """The existing claim to attach to; ClaimFailedError (reason NotFound) if missing."""
        from kubernetes.client.exceptions import ApiException
        name = self.claim_name
        try:
            found: dict[str, Any] = api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CLAIM_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise ClaimFailedError(
                    f"no sandbox named {name!r} in namespace {self.namespace!r}",
                    reason="NotFound", claim=name or "") from exc
            raise self._api_error(exc, "reading the SandboxClaim") from exc
        except Exception as exc:
            raise self._api_error(exc, "reading the SandboxClaim") from exc
        self.claim = name
        self.claim_uid = str((found.get("metadata") or {}).get("uid") or "") or None
        return found

    def _sandbox_uid(self, api: Any) -> str | None:
        """The uid of the claim's Sandbox, after checking the claim owns it.

        Sent as X-Sandbox-UID: a name may be taken again by another Sandbox (delete a claim,
        create one of the same name) while the router's cache still shows the old one; a uid
        never is. None when the Sandbox cannot be read (no permission, or a cluster whose
        claims are not served by Sandboxes): requests then carry the name only, and the
        router confirms it per connection (docs/router.md)."""
        from kubernetes.client.exceptions import ApiException
        where = f"Sandbox {self.namespace}/{self.sandbox}"
        try:
            obj = api.get_namespaced_custom_object(SANDBOX_GROUP, VERSION, self.namespace,
                                                   SANDBOX_PLURAL, self.sandbox)
        except ApiException as exc:
            if exc.status in (403, 404):
                log.info("%s not readable (%s): requests carry its name only", where,
                         exc.status)
                return None
            raise self._api_error(exc, f"reading the {where}") from exc
        except Exception as exc:
            raise self._api_error(exc, f"reading the {where}") from exc
        meta = obj.get("metadata") or {}
        owners = {str(ref.get("uid")) for ref in meta.get("ownerReferences") or ()
                  if isinstance(ref, dict) and ref.get("controller")}
        if self.claim_uid is not None and self.claim_uid not in owners:
            raise ClaimFailedError(
                f"{where} does not belong to SandboxClaim {self.namespace}/{self.claim}: the "
                "claim's Sandbox was replaced", reason="SandboxReplaced",
                claim=self.claim or "")
        return str(meta.get("uid") or "") or None

    def _delete(self, name: str) -> bool:
        """Delete a claim by name; False if it was not there. Raises ApiException or ours."""
        from kubernetes.client.exceptions import ApiException
        api = self._custom()
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, CLAIM_PLURAL,
                                                name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        log.info("deleted SandboxClaim %s/%s", self.namespace, name)
        return True

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
            raise self._api_error(exc, "deleting the SandboxClaim") from exc
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
        headers = {"X-Sandbox-ID": self.sandbox or "", "X-Sandbox-Namespace": self.namespace,
                   "X-Sandbox-Port": str(self.options.server_port)}
        if self.sandbox_uid:
            headers["X-Sandbox-UID"] = self.sandbox_uid
        if self.options.router_token:
            headers["Authorization"] = f"Bearer {self.options.router_token}"
        return headers

    # -- Backend ----------------------------------------------------------------------------

    def open(self) -> Endpoint:
        deadline = time.monotonic() + self.ready_timeout
        api = self._custom()
        found: dict[str, Any] = {}
        if self.attach:
            found = self._find_claim(api)
            version = str(found.get("metadata", {}).get("resourceVersion", ""))
        else:
            self._check_template(api)
            version = self._create_claim(api)
        try:
            # An attached claim may be Ready already: a watch from its version would wait
            # for a change that never comes.
            self.sandbox = self._judge(found) if found else None
            if self.sandbox is None:
                self.sandbox = self._wait_ready(api, version, deadline)
            self.sandbox_uid = self._sandbox_uid(api)
            base_url = self._base_url(deadline)
            transport = router_transport(base_url)
            try:
                wait_routable(transport, base_url, self.headers(), deadline,
                              f"{self.namespace}/{self.sandbox}", self.claim or "")
            except BaseException:
                transport.close()
                raise
        except BaseException:
            self.close()
            raise
        return Endpoint(base_url=base_url, transport=transport, headers=self.headers(),
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
