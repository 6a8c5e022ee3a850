"""Sync hook for Sandbox: the desired Pod, headless Service, PVCs and NetworkPolicy of one Sandbox.

Served at POST /sync/sandbox and /customize/sandbox by hooks/app.py. Pure: the answer depends
only on the request, `now` and the settings; no API calls, no randomness, no clock in output.

A Sandbox is served by exactly one pod, keyed by the Sandbox's uid (never by its name, which a
new Sandbox may take a moment after the old one is deleted): its own pod (named like the
Sandbox, labelled with its uid), or a warm pod that its SandboxWarmPool bound to it by labelling
it with that uid (the pool owns that pod for its whole life; see hooks/sandboxwarmpool.py). The
Service selects by uid. Once `status.podName` names a pod, the Sandbox keeps it while it wants
a pod: if that pod goes, it reports Ready=False `PodLost` and takes no other.

A pool-served Sandbox offers itself to its pool (Ready=False `WaitingForWarmPod`) for the warm-pod
grace and starts its own pod only after it (the pool binds only early in the grace, a free pod
or one it makes for the Sandbox), so the two paths rarely meet; when both pods exist and none
was reported yet, its own pod wins and the pool deletes the other. It watches only pods bound
to its own uid, never all of its pool's: Metacontroller re-syncs every parent related to an
object whenever it changes, and a pool's pods change with every claim.

A claim's Sandbox that has found its pod keeps the status it wrote while looking until its
claim names that pod in the `agents.x-k8s.io/pod-name` annotation (the claim sees the pod too),
then names the pod and says Ready in one status write (`holds`): every status write is an API
write and a re-sync of the claim and the pool.

A Sandbox with `spec.idleTimeout` suspends when it has been Ready that long with no request
through the router (the router reports requests in the `agents.x-k8s.io/last-activity`
annotation): no pod, Service and volumes kept, Ready=False and Suspended=True (reason Idle).
The router wakes it by writing the Suspended condition's lastTransitionTime into the
`agents.x-k8s.io/wake` annotation; the Sandbox then looks for a pod afresh (offering itself to
its pool again, with the grace counted from the resume, else cold), and only a pod labelled
with that wake's incarnation serves it: the pod it had before the suspension is being deleted
and is never taken back.

A Sandbox no SandboxClaim controls (one made directly) gets a NetworkPolicy of its own (the
template's rules, hooks/fencing.py) selecting its pod by the uid label only the controller may
set, and starts its pod once that policy is its child. A claim's Sandbox is left to its
template's policy (no write of its own); a template label alone is never trusted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hooks import fencing, lifecycle, objects, schemas
from hooks.objects import NETWORK_POLICY, POD, POOL_LABEL, SANDBOX_UID_LABEL
from hooks.typedefs import (
    DEFAULT_SETTINGS,
    CustomizeRequest,
    CustomizeResponse,
    HookSettings,
    KubeObject,
    SyncRequest,
    SyncResponse,
)

KIND = "sandbox"


def pvc_name(claim_template: KubeObject, sandbox: KubeObject) -> str:
    return f"{claim_template['metadata']['name']}-{sandbox['metadata']['name']}"


def spec_problems(sandbox: KubeObject) -> list[str]:
    problems = schemas.problems(KIND, sandbox)
    if not objects.uid_of(sandbox):
        problems.append("metadata.uid: missing; pods are bound to a Sandbox by its uid")
    return problems


def desired_pod(sandbox: KubeObject, settings: HookSettings = DEFAULT_SETTINGS) -> KubeObject:
    meta, spec = sandbox["metadata"], sandbox["spec"]
    labels = lifecycle.pod_binding_labels(sandbox)
    template_name = objects.labels_of(sandbox).get(objects.TEMPLATE_LABEL)
    if template_name:
        labels[objects.TEMPLATE_LABEL] = template_name
    pod = objects.pod_from_template(
        spec["podTemplate"],
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        labels=labels,
        runtime_class=settings["runtime_class_name"],
    )
    claims = {
        t["metadata"]["name"]: pvc_name(t, sandbox) for t in spec.get("volumeClaimTemplates", [])
    }
    if claims:
        # The PVC replaces any template volume of the same name: that is how it gets mounted.
        volumes = [v for v in pod["spec"].get("volumes", []) if v.get("name") not in claims]
        volumes += [
            {"name": n, "persistentVolumeClaim": {"claimName": c}} for n, c in claims.items()
        ]
        pod["spec"]["volumes"] = volumes
    return pod


def service_ports(sandbox: KubeObject) -> list[KubeObject]:
    ports: dict[tuple[int, str], KubeObject] = {}
    for container in sandbox["spec"]["podTemplate"]["spec"].get("containers", []):
        for port in container.get("ports") or []:
            number, protocol = port.get("containerPort"), port.get("protocol", "TCP")
            if isinstance(number, int) and (number, protocol) not in ports:
                ports[(number, protocol)] = {
                    "name": f"{protocol.lower()}-{number}",
                    "port": number,
                    "targetPort": number,
                    "protocol": protocol,
                }
    return [ports[key] for key in sorted(ports)]


def desired_service(sandbox: KubeObject) -> KubeObject:
    """Headless Service named like the sandbox, selecting only the pod that serves it (by uid:
    the pod of an earlier Sandbox of the same name is never selected)."""
    meta = sandbox["metadata"]
    spec: dict[str, Any] = {"clusterIP": "None", "selector": objects.serving_selector(sandbox)}
    ports = service_ports(sandbox)
    if ports:
        spec["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "labels": objects.binding_labels(sandbox),
        },
        "spec": spec,
    }


def desired_pvc(claim_template: KubeObject, sandbox: KubeObject) -> KubeObject:
    meta = claim_template["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc_name(claim_template, sandbox),
            "namespace": sandbox["metadata"].get("namespace", "default"),
            "labels": {
                **objects.user_keys(meta.get("labels")),
                **objects.binding_labels(sandbox),
            },
            "annotations": objects.user_keys(meta.get("annotations")),
        },
        "spec": claim_template["spec"],
    }


def fenced_by_template(sandbox: KubeObject) -> bool:
    """Whether its pod is left to its template's NetworkPolicy: only a claim's Sandbox, which
    its claim labels with the template (a Sandbox made directly may carry any label)."""
    controller = objects.controller_of(sandbox)
    return (controller is not None and controller[0] == objects.CLAIM_KIND
            and bool(objects.labels_of(sandbox).get(objects.TEMPLATE_LABEL)))


def network_policy_name(sandbox: KubeObject) -> str:
    return f"{sandbox['metadata']['name']}-sandbox"  # never a template's <template>-sandboxes


def desired_network_policy(sandbox: KubeObject, settings: HookSettings) -> KubeObject:
    """The template's default policy, fencing exactly the pod that serves this Sandbox."""
    return fencing.fencing_policy(
        name=network_policy_name(sandbox),
        namespace=sandbox["metadata"].get("namespace", "default"),
        labels=objects.binding_labels(sandbox),
        selector=objects.serving_selector(sandbox),
        pod_template=sandbox["spec"]["podTemplate"],
        router_namespace=settings["router_namespace"],
        allow_cluster_dns=True,
    )


def own_children(request: SyncRequest, kind: str, sandbox: KubeObject) -> set[str]:
    """Names of its children of `kind` labelled with its uid and not going. Metacontroller
    swallows AlreadyExists: one of the name it asked for, made by anyone else or left by an
    earlier Sandbox of this name, is not its own."""
    return {
        c["metadata"]["name"]
        for c in objects.observed(request, kind)
        if objects.carries_uid_of(c, sandbox) and not objects.is_deleting(c)
    }


def service_is_own(request: SyncRequest, sandbox: KubeObject) -> bool:
    """Whether its Service is among its children, labelled with its uid."""
    service = objects.by_name(objects.observed(request, objects.SERVICE)).get(
        sandbox["metadata"]["name"])
    return service is not None and objects.carries_uid_of(service, sandbox)


def claims_not_owned(request: SyncRequest, sandbox: KubeObject) -> list[str]:
    """Names of the PVCs its pod would mount that are not yet its own (own_children): any
    other PVC of that name would otherwise be mounted."""
    owned = own_children(request, objects.PVC, sandbox)
    wanted = [pvc_name(t, sandbox) for t in sandbox["spec"].get("volumeClaimTemplates", [])]
    return sorted(n for n in wanted if n not in owned)


def bound_warm_pods(request: SyncRequest) -> list[KubeObject]:
    """Pool pods bound to this Sandbox's uid and its current incarnation (related objects)."""
    pods = objects.observed(request, POD, "related")
    return lifecycle.warm_pods_bound_to(request["parent"], pods)


def offers_to_pool(sandbox: KubeObject, now: datetime, settings: HookSettings, *,
                   resuming: bool = False) -> float | None:
    """Seconds the sandbox may still wait for its pool to bind a pod, or None to start its own.

    It waits only while it has never started its own (an earlier answer said PodNotReady) and
    within the grace, counted from its creation or its resume (`resuming` in the answer that
    resumes it). Its pool serves it early in the grace: with a free pod, or with one made for
    it when none is free."""
    if POOL_LABEL not in objects.labels_of(sandbox):
        return None
    if objects.ready_reason(sandbox) == objects.POD_NOT_READY:
        return None
    age = 0.0 if resuming else lifecycle.serving_age(sandbox, now)
    left = settings["warm_pod_grace_seconds"] - age
    return left if left > 0 else None


def holds(sandbox: KubeObject, *, claimed: bool, annotated: str | None, resumed: bool) -> bool:
    """Whether a claim's Sandbox that found a pod keeps the status it wrote while looking
    (Ready=False WaitingForWarmPod or PodNotReady, no pod named, this generation): until its
    claim writes the pod-name annotation, which the claim does on seeing the same pod
    (lifecycle.next_pod). Then one status write names the pod and, when it is ready, says
    Ready; without the hold it would say WaitingForAnnotation first, a write (and a re-sync
    of its claim and pool) that tells nobody anything. Not after a wake, nor when the
    annotation names another pod (it says WaitingForAnnotation then, for the claim to fix).
    With no status yet (its first answer, or a parent read before that answer's write landed)
    it says it is looking: the claim names the pod from there, as from any looking status.
    So does it when the looking status is one under which its claim would not name the pod
    found (sync; lifecycle.claim_names_found)."""
    if not (claimed and annotated is None and not resumed):
        return False
    if not sandbox.get("status"):
        return True  # it says it is looking (sync): the same as its first answer would
    previous = lifecycle.find_condition(sandbox, objects.READY) or {}
    return (
        not sandbox["status"].get("podName")
        and previous.get("reason") in lifecycle.LOOKING
        and previous.get("observedGeneration") == sandbox["metadata"].get("generation")
    )


def sync(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    return objects.resync_while_children_missing(
        request, decide(request, now=now, settings=settings), now)


def decide(request: SyncRequest, *, now: datetime, settings: HookSettings) -> SyncResponse:
    """The desired children and status (sync adds the resync while a child is missing)."""
    sandbox = request["parent"]
    meta = sandbox["metadata"]
    problems = spec_problems(sandbox)
    if problems:
        # A 200 without children deletes them: keep what exists, report the spec.
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
        )

    name, namespace = meta["name"], meta.get("namespace", "default")
    fenced = fenced_by_template(sandbox)
    # Kept while it lives (suspended, scaled to 0 or expired too): it goes with the Sandbox.
    children = [] if fenced else [desired_network_policy(sandbox, settings)]
    children += [desired_pvc(t, sandbox) for t in sandbox["spec"].get("volumeClaimTemplates", [])]
    selector = ",".join(f"{k}={v}" for k, v in objects.serving_selector(sandbox).items())
    status: dict[str, Any] = {"replicas": 0, "selector": selector, "podIPs": []}

    # A first answer's Ready=False has held since the Sandbox was made: so timed, an answer
    # from a parent read before that first write landed repeats it exactly (no second write).
    created = meta.get("creationTimestamp")
    unready_since = objects.parse_time(created) if created and not sandbox.get("status") else now

    def ready(ok: bool, reason: str, message: str) -> None:
        status["conditions"] = objects.ready_conditions(
            sandbox, ok, reason, message, now=now if ok else min(now, unready_since))

    if lifecycle.sandbox_is_expired(sandbox, now):
        # Past shutdownTime the pod and Service go; volumes stay for whoever needs the data.
        ready(
            False,
            objects.SANDBOX_EXPIRED,
            f"shutdownTime {sandbox['spec']['shutdownTime']} has passed",
        )
        return {"status": status, "children": children}

    children.append(desired_service(sandbox))
    deadline = lifecycle.sandbox_shutdown_at(sandbox)
    resync = [(deadline - now).total_seconds() if deadline else None]

    # A child named like it and labelled with its uid and incarnation: not one made before a
    # suspension (being deleted, never taken back), nor a pod Metacontroller adopted for
    # carrying our controller-uid label (labels under our group are admission-guarded).
    own = lifecycle.own_pod_among(sandbox, objects.observed(request, POD))
    warm = bound_warm_pods(request)
    candidates = ([own] if own is not None else []) + warm
    reported = (sandbox.get("status") or {}).get("podName")
    pod: KubeObject | None = None
    resuming = lifecycle.is_being_woken(sandbox)
    resumed = resuming or lifecycle.has_resumed(sandbox)
    suspended = lifecycle.is_suspended(sandbox)
    if not suspended and not resuming and (idle_at := lifecycle.idle_deadline(sandbox)):
        suspended = now >= idle_at
        resync.append(None if suspended else (idle_at - now).total_seconds())
    if lifecycle.sandbox_replicas(sandbox) == 0:
        ready(False, objects.SCALED_TO_ZERO, "spec.replicas is 0: the pod is stopped")
    elif suspended:
        # Idle: the pod goes (a warm pod too: its pool deletes it), the rest stays; podName is
        # cleared, so a wake looks for a pod afresh.
        before = lifecycle.find_condition(sandbox, objects.SUSPENDED) or {}
        since = before.get("lastTransitionTime") if before.get("status") == "True" else None
        ready(False, objects.SUSPENDED,
              f"suspended since {since or objects.format_time(now)} (idle for "
              f"{sandbox['spec']['idleTimeout']}); a request through the router wakes it")
    elif reported:
        # The pod it named before, and no other: a Sandbox never moves to another pod.
        pod = next((p for p in candidates if p["metadata"]["name"] == reported), None)
        if pod is None or objects.is_deleting(pod):
            state = "is terminating" if pod is not None else "no longer exists"
            pod = None
            status["podName"] = reported
            ready(
                False,
                objects.POD_LOST,
                f"pod {reported}, which served this sandbox, {state}: its processes and "
                f"pod-local files are lost. The sandbox takes no other pod; scale it to 0 and "
                f"back to 1 for a fresh one, or make a new claim",
            )
        elif pod is own:
            children.append(desired_pod(sandbox, settings))
    elif (pod := lifecycle.next_pod(own, warm)) is not None:
        if pod is own:
            children.append(desired_pod(sandbox, settings))
    elif (left := offers_to_pool(sandbox, now, settings, resuming=resuming)) is not None:
        # Offer this sandbox to its pool for a while before starting cold.
        ready(
            False,
            objects.WAITING_FOR_WARM_POD,
            f"waiting for warm pool {objects.labels_of(sandbox)[POOL_LABEL]} to bind a pod",
        )
        resync.append(left)
    elif waiting := claims_not_owned(request, sandbox):
        # The pod mounts its claims by name: never one this Sandbox does not own.
        ready(False, objects.POD_NOT_READY,
              f"waiting for PersistentVolumeClaim {', '.join(waiting)} to be this sandbox's own "
              f"before its pod starts: one of that name owned by another (an earlier Sandbox "
              f"of this name, or anyone) is never mounted")
    elif not fenced and network_policy_name(sandbox) not in own_children(
            request, NETWORK_POLICY, sandbox):
        # Code may run as soon as the pod starts: not before the policy that fences it exists.
        ready(False, objects.POD_NOT_READY,
              f"waiting for NetworkPolicy {network_policy_name(sandbox)} to be this sandbox's "
              f"own before its pod starts")
    else:
        children.append(desired_pod(sandbox, settings))
        ready(False, objects.POD_NOT_READY, f"pod {name} is being created")

    claim = objects.controller_of(sandbox)
    claimed = claim is not None and claim[0] == objects.CLAIM_KIND
    claim_name = claim[1] if claim is not None else ""
    annotated = (meta.get("annotations") or {}).get(objects.POD_NAME_ANNOTATION)
    if pod is not None and holds(sandbox, claimed=claimed, annotated=annotated, resumed=resumed):
        # Found a pod, which its claim names next (it sees the pod too): the status it wrote
        # while looking stands until then, so finding the pod costs no status write of its own.
        if sandbox.get("status") and lifecycle.claim_names_found(
                objects.ready_reason(sandbox), own=pod is own):
            response: SyncResponse = {"status": objects.clone(sandbox["status"]),
                                      "children": children}
            if (delay := objects.merge_resync(*resync)) is not None:
                response["resyncAfterSeconds"] = delay
            return response
        # No status yet (its first answer, or a read from before that answer's write landed),
        # or one its claim would not name this pod under: WaitingForWarmPod with its own pod
        # found, written back over PodNotReady by an answer from a parent read before that
        # write landed (seen in cold bursts; held, neither hook would write again). The
        # looking status that goes with the pod found.
        if pod is own:
            ready(False, objects.POD_NOT_READY, f"pod {name} is being created")
        else:
            ready(False, objects.WAITING_FOR_WARM_POD,
                  f"waiting for warm pool {objects.labels_of(sandbox).get(POOL_LABEL)} to bind "
                  f"a pod")
        pod = None
    if pod is not None:
        pod_name = pod["metadata"]["name"]
        status.update(podName=pod_name, podIPs=objects.pod_ips(pod), replicas=1)
        if not objects.pod_is_ready(pod):
            phase = pod.get("status", {}).get("phase", "Pending")
            ready(False, objects.POD_NOT_READY, f"pod {pod_name} is {phase} and not ready")
        elif claimed and annotated != pod_name and not resumed:
            # Clients of the walkthrough's era read the pod's name from this annotation at the
            # first Ready; only the claim may write it, so Ready waits for it. Not after a
            # resume: that first Ready is long past (the claim names the new pod soon after).
            ready(
                False,
                objects.WAITING_FOR_ANNOTATION,
                f"pod {pod_name} is ready; waiting for claim {claim_name} to name it in the "
                f"{objects.POD_NAME_ANNOTATION} annotation",
            )
        else:
            ready(True, objects.SANDBOX_READY, f"pod {pod_name} is ready")

    if status.get("podName") and service_is_own(request, sandbox):
        # Only once it is ours: a Service of this name made by someone else (or left by an
        # earlier Sandbox of this name) is not replaced (Metacontroller swallows the
        # AlreadyExists), and its DNS name would lead to whatever it selects. Named with the
        # pod: no status write of its own (a looking Sandbox serves nothing by it).
        status["service"] = name
        status["serviceFQDN"] = f"{name}.{namespace}.svc.{settings['cluster_domain']}"

    if (timeout := lifecycle.idle_timeout_seconds(sandbox)) is not None and "conditions" in status:
        suspended_now = suspended and lifecycle.sandbox_replicas(sandbox) > 0
        status["conditions"].append(lifecycle.suspended_condition(
            sandbox, suspended_now, now=min(now, unready_since)))
        status["idleTimeoutSeconds"] = timeout
        # Also counted from the Ready of this answer: the status write that turns it Ready
        # re-syncs nothing (ignoreStatusChanges), so no later sync would see that Ready.
        answered = {**sandbox, "status": status}
        if not suspended_now and (idle_at := lifecycle.idle_deadline(answered)):
            resync.append((idle_at - now).total_seconds())
    response = {"status": status, "children": children}
    delay = objects.merge_resync(*resync)
    if delay is not None:
        response["resyncAfterSeconds"] = delay
    return response


def customize(request: CustomizeRequest) -> CustomizeResponse:
    """Pods bound to this sandbox's uid, for a Sandbox that offers itself to a pool (its pool
    binding one re-syncs it); nothing else.

    Nothing by name: Metacontroller answers a rule by name by listing every object of that
    kind in the namespace on each sync, and on every event of a kind it matches the rules of
    every parent that relates that kind (issue 15: at 3,000 Sandboxes, 40 % of its CPU). An
    earlier Sandbox's pod or Service of our name, still lingering, is polled for instead
    (objects.resync_while_children_missing)."""
    sandbox = request["parent"]
    namespace = sandbox["metadata"].get("namespace", "default")
    uid = objects.uid_of(sandbox)
    if uid and POOL_LABEL in objects.labels_of(sandbox):
        rules = [objects.related("v1", "pods", namespace, labels={SANDBOX_UID_LABEL: uid})]
    else:
        rules = []
    return {"relatedResources": rules}
