"""Where a Sandbox is in its life: wanted, expired, suspended for idleness, being woken.

Read by the Sandbox hook (whether it wants a pod, when it suspends, which pod may serve it
after a wake) and the warm-pool hook (which waiting Sandboxes it may bind, and with which
labels). Pure and deterministic like hooks/objects.py, on which it sits: no clock (callers pass
`now`), no I/O, never mutates its inputs. docs/controller.md, "Idle sandboxes", tells the story.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hooks import k8srules
from hooks.objects import (
    ACTIVE,
    IDLE,
    INCARNATION_LABEL,
    LAST_ACTIVITY_ANNOTATION,
    POD_NOT_READY,
    POOL_KIND,
    POOL_LABEL,
    READY,
    RESUMED,
    SANDBOX_KIND,
    SUSPENDED,
    WAITING_FOR_WARM_POD,
    WAKE_ANNOTATION,
    age_seconds,
    binding_labels,
    carries_uid_of,
    condition,
    controller_of,
    is_deleting,
    labels_of,
    parse_time,
    short_hash,
)
from hooks.typedefs import KubeObject

# ---- a Sandbox's wishes -----------------------------------------------------------------


def sandbox_replicas(sandbox: KubeObject) -> int:
    return int(sandbox.get("spec", {}).get("replicas", 1))


def sandbox_shutdown_at(sandbox: KubeObject) -> datetime | None:
    value = sandbox.get("spec", {}).get("shutdownTime")
    return parse_time(value) if value else None


def sandbox_is_expired(sandbox: KubeObject, now: datetime) -> bool:
    deadline = sandbox_shutdown_at(sandbox)
    return deadline is not None and now >= deadline



def sandbox_wants_pod(sandbox: KubeObject, now: datetime) -> bool:
    """Whether a pod should serve this sandbox now."""
    return (
        not is_deleting(sandbox)
        and sandbox_replicas(sandbox) > 0
        and not sandbox_is_expired(sandbox, now)
        and not is_suspended(sandbox)
    )



# ---- idle sandboxes ---------------------------------------------------------------------


def find_condition(obj: KubeObject, type_: str) -> KubeObject | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def annotation_time(obj: KubeObject, key: str) -> datetime | None:
    """A time written in an annotation, or None (absent or unreadable: anyone who may patch
    the Sandbox can write it, and a hook must not fail on it)."""
    value = (obj.get("metadata", {}).get("annotations") or {}).get(key)
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def idle_timeout_seconds(sandbox: KubeObject) -> int | None:
    value = sandbox.get("spec", {}).get("idleTimeout")
    return k8srules.duration_seconds(value) if value else None


def is_suspended(sandbox: KubeObject) -> bool:
    """The Sandbox reported itself suspended, and no wake for that suspension has come: the
    router wakes it by writing the suspension's lastTransitionTime into WAKE_ANNOTATION."""
    suspended = find_condition(sandbox, SUSPENDED)
    if suspended is None or suspended.get("status") != "True" or not idle_timeout_seconds(sandbox):
        return False  # removing the idle timeout wakes it too
    wake = (sandbox.get("metadata", {}).get("annotations") or {}).get(WAKE_ANNOTATION)
    return wake != suspended.get("lastTransitionTime")


def is_being_woken(sandbox: KubeObject) -> bool:
    """Reported suspended, and a wake for that suspension has come (its hook has not run)."""
    suspended = find_condition(sandbox, SUSPENDED)
    return bool(suspended and suspended.get("status") == "True") and not is_suspended(sandbox)


def has_resumed(sandbox: KubeObject) -> bool:
    """Reported Suspended=False with reason Resumed: it has been woken at least once."""
    suspended = find_condition(sandbox, SUSPENDED) or {}
    return suspended.get("status") == "False" and suspended.get("reason") == RESUMED


def incarnation(sandbox: KubeObject) -> str:
    """Which wake the Sandbox's pod must serve: "" before any wake, else a hash of the token."""
    wake = (sandbox.get("metadata", {}).get("annotations") or {}).get(WAKE_ANNOTATION)
    return short_hash(str(wake), length=10) if wake else ""


def serves_incarnation(pod: KubeObject, sandbox: KubeObject) -> bool:
    return labels_of(pod).get(INCARNATION_LABEL, "") == incarnation(sandbox)


def pod_binding_labels(sandbox: KubeObject) -> dict[str, str]:
    """binding_labels, plus the incarnation once the Sandbox has been woken."""
    labels = binding_labels(sandbox)
    if current := incarnation(sandbox):
        labels[INCARNATION_LABEL] = current
    return labels


def warm_pods_bound_to(sandbox: KubeObject, pods: list[KubeObject]) -> list[KubeObject]:
    """Pods its own pool controls and bound to this Sandbox's uid and current incarnation
    (deleting ones included: they tell a loss). Only a pod its pool controls counts: a pod
    someone else made with the right labels must not receive the sandbox's traffic."""
    pool = labels_of(sandbox).get(POOL_LABEL)
    return [
        p
        for p in pods
        if pool and controller_of(p) == (POOL_KIND, pool)
        and carries_uid_of(p, sandbox)
        and serves_incarnation(p, sandbox)
    ]


def own_pod_among(sandbox: KubeObject, pods: list[KubeObject]) -> KubeObject | None:
    """The Sandbox's own pod among `pods` (any pods, e.g. a claim's related ones): named like
    it, controlled by it, labelled with its uid and incarnation."""
    meta = sandbox.get("metadata", {})
    return next((
        p
        for p in pods
        if p["metadata"]["name"] == meta.get("name")
        and controller_of(p) == (SANDBOX_KIND, meta.get("name"))
        and carries_uid_of(p, sandbox)
        and serves_incarnation(p, sandbox)
    ), None)


def next_pod(own: KubeObject | None, warm: list[KubeObject]) -> KubeObject | None:
    """The pod a Sandbox that has named none yet takes: its own pod while live, else the first
    live warm pod bound to it, by name. The Sandbox hook takes it (hooks/sandbox.py), and its
    claim names the same pod in the pod-name annotation before the Sandbox reports it."""
    live = [p for p in ([own] if own is not None else [])
            + sorted(warm, key=lambda p: p["metadata"]["name"]) if not is_deleting(p)]
    return live[0] if live else None


# Ready reasons of a Sandbox still looking for its pod: while its claim has not named the pod
# it found, it keeps saying so (hooks/sandbox.py, "holds").
LOOKING = (WAITING_FOR_WARM_POD, POD_NOT_READY)


def claim_names_found(reason: str | None, own: bool) -> bool:
    """Whether a claim names the pod its Sandbox found (next_pod) while the Sandbox reports
    `reason` and names no pod: a warm pod under any looking reason; the Sandbox's own pod only
    once it said it started it (PodNotReady: the claim's update of the Sandbox before that
    write lands would be a conflict). The Sandbox holds its looking status only where this
    holds (hooks/sandbox.py, holds): elsewhere neither hook would write again."""
    return reason == POD_NOT_READY if own else reason in LOOKING


def serving_age(sandbox: KubeObject, now: datetime) -> float:
    """Seconds since the Sandbox last began to look for a pod: its creation, or its resume."""
    since = (find_condition(sandbox, SUSPENDED) or {}).get("lastTransitionTime")
    if has_resumed(sandbox) and since:
        return (now - parse_time(since)).total_seconds()
    return age_seconds(sandbox, now)


def idle_deadline(sandbox: KubeObject) -> datetime | None:
    """When a Ready sandbox with an idle timeout suspends: its timeout after the later of its
    turning Ready and the router's last report of a request. None: it does not (no timeout,
    or not Ready: a sandbox starting up is not idle)."""
    timeout = idle_timeout_seconds(sandbox)
    ready = find_condition(sandbox, READY)
    if timeout is None or not ready or ready.get("status") != "True":
        return None
    moments = [parse_time(ready["lastTransitionTime"])]
    if (active := annotation_time(sandbox, LAST_ACTIVITY_ANNOTATION)) is not None:
        moments.append(active)
    return max(moments) + timedelta(seconds=timeout)


def suspended_condition(sandbox: KubeObject, suspended: bool, *, now: datetime) -> KubeObject:
    """The Sandbox's Suspended condition (only for a Sandbox with an idle timeout)."""
    timeout = sandbox["spec"].get("idleTimeout")
    previous = find_condition(sandbox, SUSPENDED) or {}
    if suspended:
        reason = IDLE
        message = (f"no request through the router for {timeout}: the pod is stopped, the "
                   f"Service, name and volumes are kept; the next request wakes it")
    elif previous.get("status") == "True" or previous.get("reason") == RESUMED:
        reason, message = RESUMED, f"woken by a request; suspends after {timeout} idle"
    else:
        reason, message = ACTIVE, f"suspends after {timeout} without a request"
    return condition(SUSPENDED, suspended, reason, message, previous=sandbox.get("status"),
                     now=now, generation=sandbox["metadata"].get("generation"))
