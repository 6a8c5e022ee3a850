"""A SandboxClaim on the API server: the Kubernetes backend's calls, one function each.

Used by KubernetesBackend (agentic_sandbox._backends.kubernetes), which holds the client
and the names. Here: check the SandboxTemplate, create or find a claim, judge its Ready
condition (sandbox_common.contract classifies every reason the hooks write: a terminal one
fails at once), watch it until Ready or the ready deadline passes (the one place that
deadline is enforced), read the uid of the claim's Sandbox after checking the claim owns it,
delete a claim. `api` is a kubernetes CustomObjectsApi; API errors become the client's
exceptions. Nothing here opens a connection of its own or keeps state between calls.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from agentic_sandbox._exceptions import (
    ClaimFailedError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from sandbox_common import contract
from sandbox_common.contract import CLAIMS, EXTENSIONS_GROUP, GROUP, READY, SANDBOXES, VERSION

__all__ = ["TERMINAL_CLAIM_READY_REASONS", "api_error", "call", "check_template", "claim_name",
           "create", "delete", "find", "judge", "ready_condition", "sandbox_uid", "uid_of",
           "version_of", "wait_ready"]

log = logging.getLogger(__name__)

# Ready=False reasons that will not fix themselves: waiting on them would only burn the
# timeout (upstream's name). The contract classifies every reason the hooks write.
TERMINAL_CLAIM_READY_REASONS: Final = contract.TERMINAL_REASONS
WATCH_SLICE_S: Final = 60  # one watch request at most; the deadline is checked between


def claim_name() -> str:
    """A fresh DNS-1123 label: the claim's and therefore the Sandbox's name."""
    return f"sandbox-claim-{secrets.token_hex(4)}"


def ready_condition(claim: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (claim.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == READY:
            return condition
    return None


def api_error(exc: Exception, what: str) -> SandboxError:
    status = getattr(exc, "status", None)
    if status is None or status == 0:
        return SandboxConnectionError(f"{what}: the Kubernetes API is unreachable: {exc}")
    reason = getattr(exc, "reason", "") or ""
    return SandboxConnectionError(f"{what}: Kubernetes API answered {status} {reason}")


# What a refused call raises, by HTTP status: an error made from the ApiException, or None
# for "no answer, and that is fine" (the call then returns None).
Refusals = Mapping[int, Callable[[Any], SandboxError] | None]


def call(what: str, refusals: Refusals, method: Callable[..., Any], *args: Any) -> Any:
    """`method(*args)` on the API; a refusal listed in `refusals` becomes its error (or None),
    any other failure a SandboxConnectionError that says `what` was being done."""
    from kubernetes.client.exceptions import ApiException
    try:
        return method(*args)
    except ApiException as exc:
        if exc.status in refusals:
            error = refusals[exc.status]
            if error is None:
                return None
            raise error(exc) from exc
        raise api_error(exc, what) from exc
    except Exception as exc:
        raise api_error(exc, what) from exc


def judge(claim: dict[str, Any], namespace: str, name: str) -> str | None:
    """The sandbox name when Ready; raise on a terminal reason; None to keep waiting."""
    condition = ready_condition(claim)
    if condition is None:
        return None
    if condition.get("status") == "True":
        sandbox = ((claim.get("status") or {}).get("sandbox") or {}).get("name")
        return str(sandbox or name)
    reason = str(condition.get("reason") or "")
    if reason in TERMINAL_CLAIM_READY_REASONS:
        message = (f"SandboxClaim {namespace}/{name} failed: {reason}: "
                   f"{condition.get('message', '')}")
        error = (TemplateNotFoundError if reason == contract.TEMPLATE_NOT_FOUND
                 else ClaimFailedError)
        raise error(message, reason=reason, claim=name)
    return None


def check_template(api: Any, namespace: str, template: str) -> None:
    """TemplateNotFoundError when the template is missing; nothing when it may not be read
    (the claim's status will say)."""
    missing = TemplateNotFoundError(
        f"SandboxTemplate {template!r} does not exist in namespace {namespace!r}",
        reason=contract.TEMPLATE_NOT_FOUND)
    call("reading the SandboxTemplate", {404: lambda _: missing, 403: None},
         api.get_namespaced_custom_object, EXTENSIONS_GROUP, VERSION, namespace,
         contract.TEMPLATES, template)


def create(api: Any, namespace: str, name: str, template: str,
           idle_timeout_s: int | None = None) -> dict[str, Any]:
    """Create the claim (with `spec.idleTimeout` when given); the object the API server
    returned."""
    spec: dict[str, Any] = {"sandboxTemplateRef": {"name": template}}
    if idle_timeout_s is not None:
        spec["idleTimeout"] = f"{idle_timeout_s}s"
    body = {"apiVersion": contract.EXTENSIONS_API, "kind": contract.CLAIM_KIND,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "agentic-sandbox"}},
            "spec": spec}
    refusals: Refusals = {
        422: lambda exc: ClaimFailedError(
            f"the API server rejected the SandboxClaim: {exc.body}", reason="Invalid",
            claim=name),
        409: lambda _: ClaimFailedError(
            f"a SandboxClaim named {name!r} already exists in namespace {namespace!r}",
            reason="AlreadyExists", claim=name),
    }
    created: dict[str, Any] = call("creating the SandboxClaim", refusals,
                                   api.create_namespaced_custom_object, EXTENSIONS_GROUP,
                                   VERSION, namespace, CLAIMS, body)
    log.info("created SandboxClaim %s/%s for template %s", namespace, name, template)
    return created


def find(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The existing claim; ClaimFailedError (reason NotFound) if there is none."""
    missing = ClaimFailedError(f"no sandbox named {name!r} in namespace {namespace!r}",
                               reason="NotFound", claim=name)
    found: dict[str, Any] = call("reading the SandboxClaim", {404: lambda _: missing},
                                 api.get_namespaced_custom_object, EXTENSIONS_GROUP, VERSION,
                                 namespace, CLAIMS, name)
    return found


def wait_ready(api: Any, namespace: str, name: str, resource_version: str,
               deadline: float, timeout: float) -> str:
    """Watch the claim from `resource_version` until judge() names its sandbox; raise on a
    terminal reason, on deletion, or with SandboxTimeoutError once `deadline` (monotonic,
    `timeout` seconds after the start) has passed."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException
    last: dict[str, Any] = {}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            condition = ready_condition(last) or {}
            raise SandboxTimeoutError(
                f"SandboxClaim {namespace}/{name} not Ready after {timeout:.0f} s (last "
                f"reason: {condition.get('reason', 'none')}: {condition.get('message', '')})")
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                    api.list_namespaced_custom_object, EXTENSIONS_GROUP, VERSION, namespace,
                    CLAIMS, field_selector=f"metadata.name={name}",
                    resource_version=resource_version or None,
                    timeout_seconds=max(1, int(min(left, WATCH_SLICE_S))),
                    _request_timeout=min(left, WATCH_SLICE_S) + 5):
                obj = event.get("object") or {}
                if event.get("type") == "DELETED":
                    raise ClaimFailedError(
                        f"SandboxClaim {namespace}/{name} was deleted while waiting for it",
                        reason="Deleted", claim=name)
                if event.get("type") == "ERROR":
                    resource_version = ""  # 410 Gone: start again from a fresh list
                    break
                last = obj
                resource_version = version_of(obj)
                sandbox = judge(obj, namespace, name)
                if sandbox is not None:
                    return sandbox
                if time.monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status == 410:
                resource_version = ""
                continue
            raise api_error(exc, "watching the SandboxClaim") from exc
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
            obj = call("reading the SandboxClaim", {}, api.get_namespaced_custom_object,
                       EXTENSIONS_GROUP, VERSION, namespace, CLAIMS, name)
            last = obj
            resource_version = version_of(obj)
            sandbox = judge(obj, namespace, name)
            if sandbox is not None:
                return sandbox


def sandbox_uid(api: Any, namespace: str, sandbox: str, claim: str,
                claim_uid: str | None) -> str | None:
    """The uid of the claim's Sandbox, after checking the claim (uid `claim_uid`) owns it.

    Sent as X-Sandbox-UID: a name may be taken again by another Sandbox (delete a claim,
    create one of the same name) while the router's cache still shows the old one; a uid
    never is. None when the Sandbox cannot be read (no permission, or a cluster whose
    claims are not served by Sandboxes): requests then carry the name only, and the
    router confirms it per connection (docs/router.md)."""
    where = f"Sandbox {namespace}/{sandbox}"
    obj = call(f"reading the {where}", {403: None, 404: None},
               api.get_namespaced_custom_object, GROUP, VERSION, namespace, SANDBOXES, sandbox)
    if obj is None:
        log.info("%s not readable: requests carry its name only", where)
        return None
    meta = obj.get("metadata") or {}
    owners = {str(ref.get("uid")) for ref in meta.get("ownerReferences") or ()
              if isinstance(ref, dict) and ref.get("controller")}
    if claim_uid is not None and claim_uid not in owners:
        raise ClaimFailedError(
            f"{where} does not belong to SandboxClaim {namespace}/{claim}: the claim's "
            "Sandbox was replaced", reason=contract.SANDBOX_REPLACED, claim=claim)
    return str(meta.get("uid") or "") or None


def delete(api: Any, namespace: str, name: str) -> bool:
    """Delete a claim by name; False if it was not there. Raises ApiException or ours."""
    from kubernetes.client.exceptions import ApiException
    try:
        api.delete_namespaced_custom_object(EXTENSIONS_GROUP, VERSION, namespace, CLAIMS,
                                            name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    log.info("deleted SandboxClaim %s/%s", namespace, name)
    return True


def uid_of(obj: dict[str, Any]) -> str | None:
    return str((obj.get("metadata") or {}).get("uid") or "") or None


def version_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))
