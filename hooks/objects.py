"""Builders and readers shared by the hook modules: names, labels, conditions, child maps.

Pure and deterministic: no clock (callers pass `now`), no I/O, never mutates its inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from hooks.typedefs import KubeObject, ObjectMap, ResourceRule, SyncRequest, SyncResponse
from sandbox_common import contract
from sandbox_common.contract import ACTIVE as ACTIVE
from sandbox_common.contract import CLAIM_KIND as CLAIM_KIND
from sandbox_common.contract import CLAIM_LABEL as CLAIM_LABEL
from sandbox_common.contract import CLAIMS as CLAIMS
from sandbox_common.contract import EXPIRED as EXPIRED
from sandbox_common.contract import EXTENSIONS_API as EXTENSIONS_API
from sandbox_common.contract import IDLE as IDLE
from sandbox_common.contract import INCARNATION_LABEL as INCARNATION_LABEL
from sandbox_common.contract import INVALID_SPEC as INVALID_SPEC
from sandbox_common.contract import LAST_ACTIVITY_ANNOTATION as LAST_ACTIVITY_ANNOTATION
from sandbox_common.contract import LAST_APPLIED as LAST_APPLIED
from sandbox_common.contract import METACONTROLLER_UID_LABEL as METACONTROLLER_UID_LABEL
from sandbox_common.contract import NETWORK_POLICY_DISABLED as NETWORK_POLICY_DISABLED
from sandbox_common.contract import NETWORK_POLICY_PENDING as NETWORK_POLICY_PENDING
from sandbox_common.contract import NETWORK_POLICY_READY as NETWORK_POLICY_READY
from sandbox_common.contract import POD_LOST as POD_LOST
from sandbox_common.contract import POD_NAME_ANNOTATION as POD_NAME_ANNOTATION
from sandbox_common.contract import POD_NOT_READY as POD_NOT_READY
from sandbox_common.contract import POOL_KIND as POOL_KIND
from sandbox_common.contract import POOL_LABEL as POOL_LABEL
from sandbox_common.contract import POOL_NOT_FOUND as POOL_NOT_FOUND
from sandbox_common.contract import POOL_NOT_READY as POOL_NOT_READY
from sandbox_common.contract import POOL_READY as POOL_READY
from sandbox_common.contract import POOLS as POOLS
from sandbox_common.contract import READY as READY
from sandbox_common.contract import RESUMED as RESUMED
from sandbox_common.contract import ROLE_LABEL as ROLE_LABEL
from sandbox_common.contract import SANDBOX_API as SANDBOX_API
from sandbox_common.contract import SANDBOX_EXPIRED as SANDBOX_EXPIRED
from sandbox_common.contract import SANDBOX_KIND as SANDBOX_KIND
from sandbox_common.contract import SANDBOX_LABEL as SANDBOX_LABEL
from sandbox_common.contract import SANDBOX_NOT_READY as SANDBOX_NOT_READY
from sandbox_common.contract import SANDBOX_READY as SANDBOX_READY
from sandbox_common.contract import SANDBOX_UID_LABEL as SANDBOX_UID_LABEL
from sandbox_common.contract import SANDBOXES as SANDBOXES
from sandbox_common.contract import SCALED_TO_ZERO as SCALED_TO_ZERO
from sandbox_common.contract import SUSPENDED as SUSPENDED
from sandbox_common.contract import TEMPLATE_HASH_ANNOTATION as TEMPLATE_HASH_ANNOTATION
from sandbox_common.contract import TEMPLATE_KIND as TEMPLATE_KIND
from sandbox_common.contract import TEMPLATE_LABEL as TEMPLATE_LABEL
from sandbox_common.contract import TEMPLATE_NOT_FOUND as TEMPLATE_NOT_FOUND
from sandbox_common.contract import TEMPLATES as TEMPLATES
from sandbox_common.contract import WAITING_FOR_ANNOTATION as WAITING_FOR_ANNOTATION
from sandbox_common.contract import WAITING_FOR_WARM_POD as WAITING_FOR_WARM_POD
from sandbox_common.contract import WAKE_ANNOTATION as WAKE_ANNOTATION

# The names imported above and below are spelled in sandbox_common/contract.py; the hook
# modules read them as objects.NAME. Keys of Metacontroller's children/related maps.
POD = contract.POD_KEY
SERVICE = contract.SERVICE_KEY
PVC = contract.PVC_KEY
NETWORK_POLICY = contract.NETWORK_POLICY_KEY
SANDBOX = contract.SANDBOX_KEY
TEMPLATE = contract.TEMPLATE_KEY
POOL = contract.POOL_KEY

# Users cannot set label or annotation keys under our group (or any subdomain of it).
RESERVED_SUFFIX = contract.GROUP

# Sandbox reasons a claim reports as its own (so its client stops waiting): terminal ones
# (contract.TERMINAL_REASONS) that only the Sandbox can know. Its own deadline it reports itself.
TERMINAL_SANDBOX_REASONS = (POD_LOST, INVALID_SPEC)


# ---- reading requests -------------------------------------------------------------------


def observed(request: SyncRequest, key: str, section: str = "children") -> list[KubeObject]:
    """Objects of one kind from `children` or `related`, sorted by name (deterministic)."""
    groups: ObjectMap = request.get(section) or {}  # type: ignore[assignment]
    return sorted((groups.get(key) or {}).values(), key=lambda o: o["metadata"]["name"])


def by_name(objects: Iterable[KubeObject]) -> dict[str, KubeObject]:
    return {o["metadata"]["name"]: o for o in objects}


def labels_of(obj: KubeObject) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def is_deleting(obj: KubeObject) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def controller_of(obj: KubeObject) -> tuple[str, str] | None:
    """(kind, name) of the object's controlling owner in our API groups, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        group = str(ref.get("apiVersion", "")).split("/")[0]
        if ref.get("controller") and group.endswith(RESERVED_SUFFIX):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def pod_is_ready(pod: KubeObject) -> bool:
    if is_deleting(pod):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def pod_has_finished(pod: KubeObject) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def pod_ips(pod: KubeObject) -> list[str]:
    status = pod.get("status", {})
    ips = [entry["ip"] for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def parse_time(value: str) -> datetime:
    """RFC 3339 timestamp -> aware datetime (raises ValueError). RFC 3339 lets `T` and `Z` be
    lower case, and the API server admits such a `date-time`: so must we."""
    parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_seconds(obj: KubeObject, now: datetime) -> float:
    created = obj.get("metadata", {}).get("creationTimestamp")
    return (now - parse_time(created)).total_seconds() if created else 0.0


# ---- sandboxes (read by the sandbox and warm-pool hooks alike) ---------------------------


def uid_of(obj: KubeObject) -> str:
    return str(obj.get("metadata", {}).get("uid") or "")


def carries_uid_of(obj: KubeObject, sandbox: KubeObject) -> bool:
    """Whether `obj` is labelled with the Sandbox's uid: a name can be taken by anyone first,
    the uid label only by the controller (manifests/admission)."""
    return labels_of(obj).get(SANDBOX_UID_LABEL) == uid_of(sandbox)


def binding_labels(sandbox: KubeObject) -> dict[str, str]:
    """The labels of a pod serving `sandbox` (its own pod, or a warm pod bound to it)."""
    return {SANDBOX_LABEL: sandbox["metadata"]["name"], SANDBOX_UID_LABEL: uid_of(sandbox)}


def serving_selector(sandbox: KubeObject) -> dict[str, str]:
    """What selects the pod serving `sandbox` (its Service, status.selector): the uid only."""
    return {SANDBOX_UID_LABEL: uid_of(sandbox)}


def is_bound(pod: KubeObject) -> bool:
    """Whether the pod serves (or served) a Sandbox: it can never be handed to another."""
    labels = labels_of(pod)
    return SANDBOX_LABEL in labels or SANDBOX_UID_LABEL in labels


def ready_reason(obj: KubeObject) -> str | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c.get("reason") for c in conditions if c.get("type") == READY), None)


# ---- names and labels -------------------------------------------------------------------


def is_reserved(key: str) -> bool:
    prefix = key.split("/", 1)[0] if "/" in key else ""
    return (
        prefix == RESERVED_SUFFIX
        or prefix.endswith("." + RESERVED_SUFFIX)
        or key == METACONTROLLER_UID_LABEL
    )


def user_keys(mapping: dict[str, str] | None) -> dict[str, str]:
    """A user's labels or annotations without the keys we own."""
    return {k: v for k, v in sorted((mapping or {}).items()) if not is_reserved(k)}


def short_hash(*parts: str, length: int = 5) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]


def spec_hash(value: Any) -> str:
    return short_hash(json.dumps(value, sort_keys=True, separators=(",", ":")), length=10)


def clone(value: Any) -> Any:
    """A deep copy of plain JSON data (several times faster than copy.deepcopy)."""
    return json.loads(json.dumps(value))


def related(
    api_version: str,
    resource: str,
    namespace: str,
    *,
    name: Any = None,
    labels: dict[str, str] | None = None,
) -> ResourceRule:
    """A customize rule: the object(s) called `name` (a name or a list of names), else those
    with `labels` (else all)."""
    rule: ResourceRule = {"apiVersion": api_version, "resource": resource, "namespace": namespace}
    if isinstance(name, str):
        rule["names"] = [name]
    elif isinstance(name, list) and name:
        rule["names"] = [str(n) for n in name]
    else:
        rule["labelSelector"] = {"matchLabels": dict(labels or {})}
    return rule


# ---- building children ------------------------------------------------------------------


PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
# The user our own runtime image runs as (Dockerfile: `sandbox`, uid 1000). A pod must not run
# as root by default, and runAsNonRoot alone would make the kubelet refuse an image whose USER
# is root (the seed's may be): so the pod also gets this uid, gid and fsGroup (volumes writable).
DEFAULT_UID = 1000


def set_runtime_class(pod_spec: KubeObject, default: str) -> None:
    """The template's RuntimeClass, else `default`; none if both are "" (API servers refuse "")."""
    if chosen := str(pod_spec.get("runtimeClassName") or default):
        pod_spec["runtimeClassName"] = chosen
    else:
        pod_spec.pop("runtimeClassName", None)


def secure_pod_spec(spec: KubeObject, runtime_class: str) -> None:
    """Fill in, where the template is silent, the RuntimeClass `runtime_class` (gVisor as
    shipped; "" or absent in the template alike, and none when it is "" too) and what the
    "restricted" Pod Security Standard asks: no service-account token, non-root user
    (uid/gid/fsGroup DEFAULT_UID), seccomp RuntimeDefault, and in every container no privilege
    escalation and all capabilities dropped. An explicit value is never changed: a template's
    author may loosen any of these (manifests/admission refuses another RuntimeClass and the
    host's namespaces, privileged containers and host paths; the namespace's Pod Security
    admission decides the rest)."""
    set_runtime_class(spec, runtime_class)
    spec.setdefault("automountServiceAccountToken", False)
    containers = [c for g in ("initContainers", "containers") for c in spec.get(g) or []]
    for container in containers:
        security = container.setdefault("securityContext", {})
        added = (security.get("capabilities") or {}).get("add") or []
        # The API server refuses allowPrivilegeEscalation: false beside these explicit choices.
        if not security.get("privileged") and not {"SYS_ADMIN", "CAP_SYS_ADMIN"} & set(added):
            security.setdefault("allowPrivilegeEscalation", False)
    if (spec.get("os") or {}).get("name") == "windows":
        return  # the API server refuses Linux-only security fields on Windows pods
    pod = spec.setdefault("securityContext", {})
    users = [pod.get("runAsUser")] + [c["securityContext"].get("runAsUser") for c in containers]
    if 0 not in users:  # a template that asks for root gets root, not a pod that cannot start
        pod.setdefault("runAsNonRoot", True)
    pod.setdefault("runAsUser", DEFAULT_UID)
    pod.setdefault("runAsGroup", DEFAULT_UID)
    pod.setdefault("fsGroup", DEFAULT_UID)
    pod.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for container in containers:
        container["securityContext"].setdefault("capabilities", {}).setdefault("drop", ["ALL"])


def pod_from_template(
    pod_template: KubeObject,
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    runtime_class: str,
    annotations: dict[str, str] | None = None,
) -> KubeObject:
    """A Pod from a template's podTemplate, with our labels and the secure defaults
    (secure_pod_spec, `runtime_class` where it names none) where the template is silent."""
    template = clone(pod_template)
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    secure_pod_spec(spec, runtime_class)
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            # The API server drops zero probe counters (omitempty); one we send anyway reads,
            # to Metacontroller's 3-way merge, as a change to apply on every sync.
            for probe in PROBES:
                for key, value in list((container.get(probe) or {}).items()):
                    if value == 0 and not isinstance(value, bool):
                        del container[probe][key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**user_keys(meta.get("labels")), **labels},
            "annotations": {**user_keys(meta.get("annotations")), **(annotations or {})},
        },
        "spec": spec,
    }


def as_desired(obj: KubeObject) -> KubeObject:
    """An observed child as we would have asked for it: what was last applied, if recorded.

    Used to keep a child unchanged: Metacontroller deletes children missing from a 200 answer.
    """
    last = obj.get("metadata", {}).get("annotations", {}).get(LAST_APPLIED)
    if last:
        try:
            return json.loads(last)
        except ValueError:
            pass
    meta = obj.get("metadata", {})
    kept = {k: clone(v) for k, v in obj.items() if k not in ("metadata", "status")}
    kept["metadata"] = {
        k: clone(meta[k]) for k in ("name", "namespace", "labels", "annotations") if k in meta
    }
    kept["metadata"].get("annotations", {}).pop(LAST_APPLIED, None)
    return kept


def all_children(request: SyncRequest) -> list[KubeObject]:
    groups: ObjectMap = request.get("children") or {}  # type: ignore[assignment]
    return [as_desired(obj) for key in sorted(groups) for obj in observed(request, key)]


# ---- status -----------------------------------------------------------------------------


def condition(
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    *,
    previous: KubeObject | None,
    now: datetime,
    generation: int | None = None,
) -> KubeObject:
    """A standard condition. lastTransitionTime moves only when the status flips, so the
    same observed state gives the same status (a changing status would resync forever)."""
    status = "True" if ok else "False"
    old = next(
        (c for c in (previous or {}).get("conditions") or [] if c.get("type") == type_), None
    )
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else format_time(now)
    )
    cond: KubeObject = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def ready_conditions(
    parent: KubeObject, ok: bool, reason: str, message: str, *, now: datetime
) -> list[KubeObject]:
    """The parent's `status.conditions`: its Ready condition, observed at this generation."""
    return [
        condition(
            READY,
            ok,
            reason,
            message,
            previous=parent.get("status"),
            now=now,
            generation=parent["metadata"].get("generation"),
        )
    ]


def keep_children(
    request: SyncRequest,
    *,
    reason: str,
    message: str,
    now: datetime,
    extra_status: dict[str, Any] | None = None,
) -> SyncResponse:
    """Answer for a spec we cannot act on: every observed child kept, the problem in status."""
    parent = request["parent"]
    previous = parent.get("status") or {}
    status = {**{k: v for k, v in previous.items() if k != "conditions"}, **(extra_status or {})}
    status["conditions"] = ready_conditions(parent, False, reason, message, now=now)
    return {"status": status, "children": all_children(request)}


# How soon a parent whose child is missing is synced again: at its age, between these bounds.
MISSING_CHILD_RESYNC_SECONDS = (1.0, 30.0)


def resync_while_children_missing(
    request: SyncRequest, response: SyncResponse, now: datetime
) -> SyncResponse:
    """The response, asking to be synced again soon while a child it asks for is not among
    the parent's observed children yet.

    Metacontroller creates a missing child and swallows AlreadyExists: while an object of that
    name lingers under another owner (the pod of an earlier Sandbox of the same name,
    terminating), nothing else would sync this parent again when it goes. We poll for it
    rather than relate objects by name: Metacontroller answers a rule by name by listing every
    object of that kind in the namespace on each sync, and matches every parent's rules on
    every event of that kind (O(namespace) per claim; issue 15). The interval is the parent's
    age within MISSING_CHILD_RESYNC_SECONDS, so a child that stays missing is asked about a
    few times a minute at most, not once a second."""
    groups: ObjectMap = request.get("children") or {}  # type: ignore[assignment]
    observed_names = {
        key: {o["metadata"]["name"] for o in group.values()} for key, group in groups.items()
    }
    if all(
        c["metadata"]["name"] in observed_names.get(f"{c['kind']}.{c['apiVersion']}", ())
        for c in response.get("children") or []
    ):
        return response
    low, high = MISSING_CHILD_RESYNC_SECONDS
    delay = min(high, max(low, age_seconds(request["parent"], now)))
    merged = merge_resync(response.get("resyncAfterSeconds"), delay)
    return {**response, "resyncAfterSeconds": merged} if merged is not None else response


def merge_resync(*delays: float | None) -> float | None:
    """The soonest of several optional resync delays (seconds), at least one second."""
    pending = [d for d in delays if d is not None]
    return max(1.0, min(pending)) if pending else None
