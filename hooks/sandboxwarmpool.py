"""Sync, customize and finalize hooks for SandboxWarmPool: pre-warmed pods, bound one-to-one.

Served at POST /{sync,customize,finalize}/sandboxwarmpool by hooks/app.py. Pure: the answer
depends only on the request, `now` and the settings.

The pool is the single writer of its pods for their whole life (Metacontroller cannot hand a
child to another parent). It keeps `spec.replicas` free pods of its template running. A
Sandbox that wants one carries the label `agents.x-k8s.io/warm-pool=<pool>` and arrives here as
a related object; while it offers itself (Ready=False `WaitingForWarmPod`, early in its grace)
the pool binds a free pod to it by adding the labels `agents.x-k8s.io/sandbox-uid=<uid>`
(what its Service selects) and `agents.x-k8s.io/sandbox=<name>` (for people): a Ready one
first, else one still warming up, else a pod made for it with those labels (so a pool that
runs dry serves at once rather than after the grace). A bound pod is never re-labelled: when
the Sandbox of that uid goes (a new Sandbox of the same name is another uid), stops wanting it,
or serves from another pod, the pool deletes it and refills, so a warm pod serves at most one
Sandbox uid, ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from hooks import lifecycle, objects, schemas
from hooks.objects import (
    POD,
    POOL_LABEL,
    SANDBOX,
    SANDBOX_LABEL,
    SANDBOX_UID_LABEL,
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

KIND = "sandboxwarmpool"


def template_name(pool: KubeObject) -> str:
    return str(pool["spec"]["sandboxTemplateRef"]["name"])


def pod_name(pool: KubeObject, index: int) -> str:
    """Concrete and deterministic; the uid hash keeps two pools' pods (and sandboxes) apart."""
    meta = pool["metadata"]
    return f"{meta['name']}-{objects.short_hash(meta.get('uid', ''), length=4)}-{index}"


def template_hash(template: KubeObject, settings: HookSettings) -> str:
    """The pod template as its pods run it, with the RuntimeClass they get: a free pod made
    under another class (before gVisor was the default, say) is not one of its pods."""
    pod_template = template["spec"]["podTemplate"]
    spec = dict(pod_template.get("spec") or {})
    objects.set_runtime_class(spec, settings["runtime_class_name"])
    return objects.spec_hash({**pod_template, "spec": spec})


def desired_pod(
    pool: KubeObject, template: KubeObject, name: str, settings: HookSettings
) -> KubeObject:
    meta = pool["metadata"]
    return objects.pod_from_template(
        template["spec"]["podTemplate"],
        name=name,
        namespace=meta.get("namespace", "default"),
        labels={POOL_LABEL: meta["name"], TEMPLATE_LABEL: template["metadata"]["name"]},
        runtime_class=settings["runtime_class_name"],
        annotations={objects.TEMPLATE_HASH_ANNOTATION: template_hash(template, settings)},
    )


def bind(pod: KubeObject, sandbox: KubeObject) -> KubeObject:
    """The pod as we last asked for it, plus the binding labels (labels are mutable)."""
    desired = objects.clone(objects.as_desired(pod))
    desired["metadata"].setdefault("labels", {}).update(lifecycle.pod_binding_labels(sandbox))
    return desired


def keeps_binding(pod: KubeObject, sandbox: KubeObject | None, now: datetime) -> bool:
    """A bound pod stays while the Sandbox of its uid exists, wants a pod (it is not
    suspended, nor woken since the pod was bound) and has not named another one."""
    if sandbox is None or not lifecycle.sandbox_wants_pod(sandbox, now):
        return False
    if not lifecycle.serves_incarnation(pod, sandbox):
        return False
    serving = (sandbox.get("status") or {}).get("podName")
    return serving in (None, "", pod["metadata"]["name"])


def binding_window(settings: HookSettings) -> float:
    """How long after its creation a Sandbox may still be bound: a second short of its grace
    (at most half of it), so a binding never lands as the Sandbox starts its own pod."""
    grace = settings["warm_pod_grace_seconds"]
    return grace - min(1.0, grace / 2)


def wants_binding(
    sandbox: KubeObject, pool: KubeObject, now: datetime, settings: HookSettings
) -> bool:
    labels = objects.labels_of(sandbox)
    return (
        labels.get(POOL_LABEL) == pool["metadata"]["name"]
        and labels.get(TEMPLATE_LABEL, template_name(pool)) == template_name(pool)
        and bool(objects.uid_of(sandbox))
        and lifecycle.sandbox_wants_pod(sandbox, now)
        and not (sandbox.get("status") or {}).get("podName")
        # It offers itself (or has not answered yet: its first answer offers whenever the
        # pool has a free pod, and with none the pool has nothing to bind either).
        and objects.ready_reason(sandbox) in (None, objects.WAITING_FOR_WARM_POD)
        and lifecycle.serving_age(sandbox, now) < binding_window(settings)
    )


def arrival(obj: KubeObject) -> tuple[str, str]:
    return (obj["metadata"].get("creationTimestamp", ""), obj["metadata"]["name"])


def status_of(
    pool: KubeObject,
    free: list[KubeObject],
    bound: int,
    *,
    now: datetime,
    template_missing: bool = False,
) -> dict[str, Any]:
    ready = sum(1 for p in free if objects.pod_is_ready(p))
    wanted = int(pool["spec"].get("replicas", 1))
    if template_missing:
        ok, reason = False, objects.TEMPLATE_NOT_FOUND
        message = f"SandboxTemplate {template_name(pool)} not found; existing pods are kept"
    else:
        ok = ready >= wanted
        reason = objects.POOL_READY if ok else objects.POOL_NOT_READY
        message = f"{ready}/{wanted} warm pods ready, {bound} serving sandboxes"
    return {
        "replicas": len(free),
        "readyReplicas": ready,
        "boundReplicas": bound,
        "selector": f"{POOL_LABEL}={pool['metadata']['name']},!{SANDBOX_LABEL}",
        "conditions": objects.ready_conditions(pool, ok, reason, message, now=now),
    }


def sync(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    pool = request["parent"]
    problems = schemas.problems(KIND, pool)
    if problems:
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
        )

    finalizing = bool(request.get("finalizing"))
    sandboxes = {objects.uid_of(s): s for s in objects.observed(request, SANDBOX, "related")}
    pods = [p for p in objects.observed(request, POD) if not objects.is_deleting(p)]
    in_use = {p["metadata"]["name"] for p in objects.observed(request, POD)}

    # Bound pods: kept exactly as they are while the Sandbox of their uid holds them, deleted
    # after (and so are pods bound by name only, by a version before uids: nobody can tell
    # which Sandbox of that name they served).
    children: list[KubeObject] = []
    served: set[str] = set()
    for pod in pods:
        owner = objects.labels_of(pod).get(SANDBOX_UID_LABEL)
        if owner and keeps_binding(pod, sandboxes.get(owner), now):
            children.append(objects.as_desired(pod))
            served.add(owner)
    bound = len(children)

    template = next(iter(objects.observed(request, TEMPLATE, "related")), None)
    free = [p for p in pods if not objects.is_bound(p)]
    if finalizing:
        # Pool deletion: free pods go now; bound pods stay until their Sandbox lets go.
        response: SyncResponse = {
            "children": children,
            "finalized": bound == 0,
            "status": status_of(pool, [], bound, now=now),
        }
        return response
    if template is not None and (problems := schemas.template_problems(template)):
        # Pods made from it would be refused by the API server: make none, keep what exists.
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
        )
    if template is None:
        # Nothing to build from: keep every pod, report why the pool cannot fill.
        children += [objects.as_desired(p) for p in free]
        return {
            "children": children,
            "status": status_of(pool, free, bound, now=now, template_missing=True),
        }

    # Free pods of the current template, Ready first, up to spec.replicas; older ones go.
    # Pods that finished (Failed, Succeeded) can never warm up again: replace them too.
    current = template_hash(template, settings)
    free = [
        p
        for p in free
        if p["metadata"].get("annotations", {}).get(objects.TEMPLATE_HASH_ANNOTATION) == current
        and not objects.pod_has_finished(p)
    ]
    free.sort(key=lambda p: (not objects.pod_is_ready(p), p["metadata"]["name"]))

    # Serve waiting Sandboxes, oldest first: free pods (Ready ones first, `free` is sorted so),
    # then pods made for them.
    waiting = [
        s
        for s in sorted(sandboxes.values(), key=arrival)
        if objects.uid_of(s) not in served and wants_binding(s, pool, now, settings)
    ]
    bindings = list(zip(waiting, free, strict=False))
    for sandbox, pod in bindings:
        children.append(bind(pod, sandbox))
        free.remove(pod)
    names = free_names(pool, in_use)
    for sandbox in waiting[len(bindings):]:
        children.append(bind(desired_pod(pool, template, next(names), settings), sandbox))
    bound += len(waiting)

    wanted = int(pool["spec"].get("replicas", 1))
    kept = free[:wanted]
    children += [objects.as_desired(p) for p in kept]
    # Metacontroller writes an answer's children one at a time, in no particular order: an
    # answer that serves Sandboxes leaves the refill for later while at least half the pool
    # is still free, so a burst's bindings do not queue behind pod creations; below that it
    # refills at once, so steady load (every answer serves someone) never starves the pool.
    refill = wanted - len(kept)
    if waiting and 2 * len(kept) >= wanted:
        refill = 0
    for _ in range(refill):
        children.append(desired_pod(pool, template, next(names), settings))
    return {
        "children": children,
        "status": status_of(pool, kept, bound, now=now),
    }


def free_names(pool: KubeObject, in_use: set[str]) -> Iterator[str]:
    """Pod names of the pool that no pod holds (not even a terminating one), lowest first."""
    index = 0
    while True:
        name = pod_name(pool, index)
        if name not in in_use:
            in_use.add(name)
            yield name
        index += 1


def finalize(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    return sync({**request, "finalizing": True}, now=now, settings=settings)


def customize(request: CustomizeRequest) -> CustomizeResponse:
    """The pool's template (by name) and the Sandboxes that want one of its pods (by label)."""
    pool = request["parent"]
    namespace = pool["metadata"].get("namespace", "default")
    template = ((pool.get("spec") or {}).get("sandboxTemplateRef") or {}).get("name")
    rules = [
        objects.related(
            objects.SANDBOX_API,
            objects.SANDBOXES,
            namespace,
            labels={POOL_LABEL: pool["metadata"]["name"]},
        )
    ]
    if isinstance(template, str):
        rules.append(
            objects.related(objects.EXTENSIONS_API, objects.TEMPLATES, namespace, name=template)
        )
    return {"relatedResources": rules}
