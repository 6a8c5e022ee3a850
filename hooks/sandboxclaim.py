"""Sync and customize hooks for SandboxClaim: one Sandbox, named exactly like the claim.

Served at POST /{sync,customize}/sandboxclaim by hooks/app.py. Pure: the answer depends only
on the request and `now`.

The walkthrough's client waits for a Sandbox of the claim's name and routes with
`X-Sandbox-ID: <claim name>`, so the name is fixed whichever pod serves it. The claim picks a
warm pool (spec.warmPoolRef, else one of the pools its template lists in `status.warmPools`,
by a hash of the claim's uid, so claims spread over a template's pools) and labels its Sandbox
with it; the pool binds a warm pod (or makes one for it), or the Sandbox starts its own after
a short grace. The claim forwards the Sandbox's readiness (a reason the Sandbox cannot recover
from, such as `PodLost`, becomes the claim's own) and names the serving pod: in its status,
and in the Sandbox's `agents.x-k8s.io/pod-name` annotation as soon as the pod its Sandbox found
is Ready (it relates pods labelled with the Sandbox's name and picks as the Sandbox does,
hooks/lifecycle.py next_pod) or the Sandbox reports a pod. A claim's Sandbox reports Ready only
once that annotation names its pod, so a client that reads the annotation at the first Ready
event always finds it; until then it says nothing new (hooks/sandbox.py, holds). Its
lifecycle.shutdownTime is the Sandbox's spec.shutdownTime, kept in step on every sync; past
it, shutdownPolicy (read on every sync, so an edit is honoured) deletes the Sandbox or retains
it, expired. Its idleTimeout (else its template's) is the Sandbox's spec.idleTimeout.

Every status that differs from the last is an API write (and an event for every client
watching the claim), so until it is Ready a claim's status says the same thing whatever its
Sandbox is doing: a claim costs two status writes, at creation and at Ready.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hooks import objects, schemas
from hooks.lifecycle import (
    LOOKING,
    claim_names_found,
    next_pod,
    own_pod_among,
    warm_pods_bound_to,
)
from hooks.objects import (
    CLAIM_LABEL,
    POD,
    POOL,
    POOL_LABEL,
    SANDBOX,
    SANDBOX_LABEL,
    TEMPLATE,
    TEMPLATE_LABEL,
)
from hooks.typedefs import (
    DEFAULT_SETTINGS,
    CustomizeRequest,
    CustomizeResponse,
    HookSettings,
    KubeObject,
    SyncRequest,
    SyncResponse,
)

KIND = "sandboxclaim"


def spec_problems(claim: KubeObject) -> list[str]:
    spec = claim.get("spec")
    problems = schemas.problems(KIND, claim)
    if isinstance(spec, dict) and not (spec.get("sandboxTemplateRef") or spec.get("warmPoolRef")):
        problems.append("spec: spec.sandboxTemplateRef or spec.warmPoolRef is required")
    return problems


def lifecycle(claim: KubeObject) -> tuple[datetime | None, str]:
    given = claim["spec"].get("lifecycle") or {}
    deadline = given.get("shutdownTime")
    return (
        objects.parse_time(deadline) if deadline else None,
        given.get("shutdownPolicy", "Delete"),
    )


def template_pool(claim: KubeObject, template: KubeObject) -> str | None:
    """One of the pools the template lists (status.warmPools), by a hash of the claim's uid:
    claims spread evenly over a template's pools, and a claim always picks the same one."""
    listed = (template.get("status") or {}).get("warmPools") or []
    names = sorted(n for n in listed if isinstance(n, str) and n)
    if not names:
        return None
    key = objects.uid_of(claim) or claim["metadata"]["name"]
    return names[int(objects.short_hash(key, length=8), 16) % len(names)]


def desired_sandbox(claim: KubeObject, template: KubeObject, pool: str | None) -> KubeObject:
    meta = claim["metadata"]
    labels = {CLAIM_LABEL: meta["name"], TEMPLATE_LABEL: template["metadata"]["name"]}
    if pool is not None:
        labels[POOL_LABEL] = pool
    spec: dict[str, Any] = {"podTemplate": objects.clone(template["spec"]["podTemplate"])}
    if template["spec"].get("idleTimeout"):
        spec["idleTimeout"] = template["spec"]["idleTimeout"]  # the claim's own wins (below)
    sandbox = {
        "apiVersion": objects.SANDBOX_API,
        "kind": objects.SANDBOX_KIND,
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
        },
        "spec": spec,
    }
    return with_idle_timeout(with_shutdown_time(sandbox, claim), claim)


def with_idle_timeout(sandbox: KubeObject, claim: KubeObject) -> KubeObject:
    """The claim's idleTimeout, when it has one, as its Sandbox's (kept in step on every sync,
    like shutdownTime); without one the Sandbox keeps its template's, taken when it was made."""
    if claim["spec"].get("idleTimeout"):
        sandbox.setdefault("spec", {})["idleTimeout"] = claim["spec"]["idleTimeout"]
    return sandbox


def with_shutdown_time(sandbox: KubeObject, claim: KubeObject) -> KubeObject:
    """The claim's lifecycle.shutdownTime as its Sandbox's spec.shutdownTime (none if none).

    Applied to a live Sandbox on every sync, so extending, shortening or removing a live
    claim's deadline moves its Sandbox's, and the two always expire together.
    """
    deadline = (claim["spec"].get("lifecycle") or {}).get("shutdownTime")
    spec = sandbox.setdefault("spec", {})
    if deadline:
        spec["shutdownTime"] = deadline
    else:
        spec.pop("shutdownTime", None)
    return sandbox


def with_pod_annotation(sandbox: KubeObject, pod_name: str | None) -> KubeObject:
    # No empty map when there is no name yet: it would change last-applied, a needless write.
    if pod_name:
        sandbox["metadata"].setdefault("annotations", {})[objects.POD_NAME_ANNOTATION] = pod_name
    return sandbox


def sandbox_ready(sandbox: KubeObject | None) -> KubeObject | None:
    conditions = (sandbox or {}).get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == objects.READY), None)


def sync(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    return objects.resync_while_children_missing(request, decide(request, now=now), now)


def decide(request: SyncRequest, *, now: datetime) -> SyncResponse:
    """The Sandbox and status (sync adds the resync while the Sandbox is missing)."""
    claim = request["parent"]
    name = claim["metadata"]["name"]

    def answer(
        children: list[KubeObject],
        ok: bool,
        reason: str,
        message: str,
        sandbox_status: dict[str, Any] | None = None,
    ) -> SyncResponse:
        status: dict[str, Any] = {
            "conditions": objects.ready_conditions(claim, ok, reason, message, now=now)
        }
        if sandbox_status:
            status["sandbox"] = sandbox_status
        return {"children": children, "status": status}

    def not_ready(children: list[KubeObject]) -> SyncResponse:
        """One status from creation until Ready, whatever the Sandbox reports meanwhile."""
        return answer(
            children,
            False,
            objects.SANDBOX_NOT_READY,
            f"sandbox {name} is not ready yet",
            {"name": name},
        )

    problems = spec_problems(claim)
    if problems:
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
        )

    deadline, policy = lifecycle(claim)
    existing = objects.by_name(objects.observed(request, SANDBOX)).get(name)
    if deadline is not None and now >= deadline:
        if policy == "Delete" or existing is None:
            return answer(
                [],
                False,
                objects.EXPIRED,
                f"lifecycle.shutdownTime {claim['spec']['lifecycle']['shutdownTime']} "
                f"has passed; the sandbox was deleted",
            )
        kept = with_shutdown_time(objects.clone(objects.as_desired(existing)), claim)
        # Said from the Sandbox's own report: until it has expired too, its pod still runs.
        if (sandbox_ready(existing) or {}).get("reason") == objects.SANDBOX_EXPIRED:
            state = "has expired too: its pod is deleted, its volumes kept"
        else:
            state = "is stopping its pod"
        return answer(
            [kept],
            False,
            objects.EXPIRED,
            f"lifecycle.shutdownTime has passed; sandbox {name} is retained and {state}",
            {"name": name},
        )

    if existing is not None:
        # The Sandbox keeps the pod template it was made with; its shutdownTime follows the
        # claim's lifecycle, and the pod-name annotation follows its status.
        pod_name = (existing.get("status") or {}).get("podName")
        cond = sandbox_ready(existing) or {}
        # While the Sandbox is still looking, the pod it has found, once that pod is Ready: the
        # Sandbox says nothing new until this annotation names the pod (hooks/sandbox.py,
        # holds), and then says Ready in one write. Not before the pod is Ready: a pod made for
        # it changes twice at once (created, then Ready), and a second update of the Sandbox
        # from a cache that has not seen the first is a conflict (a failed write, and a retry
        # seconds later under load). Its own pod only once it says it started it (PodNotReady):
        # it writes that status just after creating the pod, and an update of the Sandbox made
        # before that write lands is a conflict too.
        annotated = pod_name
        if not pod_name and cond.get("reason") in LOOKING:
            pods = objects.observed(request, POD, "related")
            own = own_pod_among(existing, pods)
            found = next_pod(own, warm_pods_bound_to(existing, pods))
            if found is not None and objects.pod_is_ready(found) and claim_names_found(
                    cond.get("reason"), own=found is own):
                annotated = found["metadata"]["name"]
        sandbox = with_pod_annotation(objects.clone(objects.as_desired(existing)), annotated)
        sandbox = with_idle_timeout(with_shutdown_time(sandbox, claim), claim)
        named = {"name": name, **({"podName": pod_name} if pod_name else {})}
        # A Sandbox whose pod is Ready waits only for the annotation this answer writes, and
        # Metacontroller writes children before status: the claim is Ready now.
        if cond.get("status") == "True" or (
            pod_name and cond.get("reason") == objects.WAITING_FOR_ANNOTATION
        ):
            response = answer(
                [sandbox],
                True,
                objects.SANDBOX_READY,
                f"sandbox {name} is ready (pod {pod_name})",
                named,
            )
        elif cond.get("reason") in objects.TERMINAL_SANDBOX_REASONS:
            # A reason the Sandbox will not recover from is the claim's own: clients stop waiting.
            response = answer(
                [sandbox],
                False,
                str(cond["reason"]),
                f"sandbox {name} is not ready: {cond.get('reason')}: {cond.get('message')}",
                named,
            )
        else:
            response = not_ready([sandbox])
    else:
        pools = objects.observed(request, POOL, "related")
        spec = claim["spec"]
        named_pool = None
        if spec.get("warmPoolRef"):
            wanted = spec["warmPoolRef"]["name"]
            named_pool = next((p for p in pools if p["metadata"]["name"] == wanted), None)
        if spec.get("warmPoolRef") and named_pool is None and not spec.get("sandboxTemplateRef"):
            return answer(
                [],
                False,
                objects.POOL_NOT_FOUND,
                f"SandboxWarmPool {spec['warmPoolRef']['name']} not found",
            )
        template_name = (spec.get("sandboxTemplateRef") or {}).get("name") or (
            named_pool or {}
        )["spec"]["sandboxTemplateRef"]["name"]
        template = next(
            (
                t
                for t in objects.observed(request, TEMPLATE, "related")
                if t["metadata"]["name"] == template_name
            ),
            None,
        )
        if template is None:
            return answer(
                [], False, objects.TEMPLATE_NOT_FOUND, f"SandboxTemplate {template_name} not found"
            )
        if problems := schemas.template_problems(template):
            # Its Sandbox would be refused by the API server: say why instead.
            return objects.keep_children(
                request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
            )
        if named_pool is not None:
            pool: str | None = named_pool["metadata"]["name"]
        elif spec.get("warmPoolRef"):
            pool = None  # the named pool is gone: the Sandbox starts its own pod
        else:
            pool = template_pool(claim, template)
        response = not_ready([desired_sandbox(claim, template, pool)])

    if deadline is not None:
        response["resyncAfterSeconds"] = max(1.0, (deadline - now).total_seconds())
    return response


def customize(request: CustomizeRequest) -> CustomizeResponse:
    """The claim's template (by name when named, else all in the namespace), the pool it names
    if any (a claim without a template reference learns it from its pool), and the pods
    labelled with its Sandbox's name.

    Not its Sandbox: that is its child (Metacontroller finds children by owner, without
    looking at the rest of the namespace). Not by name either: Metacontroller answers a rule
    by name by listing every object of that kind in the namespace on each sync, and matches
    every claim's rules on every event of that kind; an earlier claim's Sandbox of our name,
    still lingering, is polled for instead (objects.resync_while_children_missing). No other
    pools: a pool's status changes with every binding; the template lists its pools instead
    (hooks/sandboxtemplate.py)."""
    claim = request["parent"]
    namespace = claim["metadata"].get("namespace", "default")
    spec = claim.get("spec") or {}
    template = (spec.get("sandboxTemplateRef") or {}).get("name")
    pool = (spec.get("warmPoolRef") or {}).get("name")
    rules = [objects.related(objects.EXTENSIONS_API, objects.TEMPLATES, namespace, name=template)]
    if isinstance(pool, str) and pool:
        rules.append(objects.related(objects.EXTENSIONS_API, objects.POOLS, namespace, name=pool))
    # Pods labelled with its Sandbox's name (its own pod, or a warm pod bound to it): the
    # claim names the pod its Sandbox found before the Sandbox reports it.
    rules.append(objects.related("v1", "pods", namespace,
                                 labels={SANDBOX_LABEL: claim["metadata"]["name"]}))
    return {"relatedResources": rules}
