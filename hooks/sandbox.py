"""Sync hook for Sandbox: the desired Pod, headless Service and PVCs of one Sandbox.

Served at POST /sync/sandbox and /customize/sandbox by hooks/app.py. Pure: the answer depends
only on the request, `now` and the settings; no API calls, no randomness, no clock in output.

A Sandbox is served by exactly one pod: its own (named like the Sandbox), or a warm pod that
its SandboxWarmPool bound to it by labelling it `agents.x-k8s.io/sandbox=<name>` (the pool
owns that pod for its whole life; see hooks/sandboxwarmpool.py). Once a Sandbox has its own
pod it keeps it, so a late binding can never move a running sandbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hooks import objects, schemas
from hooks.objects import POD, POOL_LABEL, SANDBOX_LABEL
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
    return objects.name_problems(sandbox["metadata"]["name"], service=True) + schemas.validate(
        KIND, sandbox.get("spec")
    )


def desired_pod(sandbox: KubeObject) -> KubeObject:
    meta, spec = sandbox["metadata"], sandbox["spec"]
    labels = {SANDBOX_LABEL: meta["name"]}
    template_name = objects.labels_of(sandbox).get(objects.TEMPLATE_LABEL)
    if template_name:
        labels[objects.TEMPLATE_LABEL] = template_name
    pod = objects.pod_from_template(
        spec["podTemplate"],
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        labels=labels,
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
    """Headless Service named like the sandbox, selecting only the pod that serves it."""
    meta = sandbox["metadata"]
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "selector": {SANDBOX_LABEL: meta["name"]},
    }
    ports = service_ports(sandbox)
    if ports:
        spec["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "labels": {SANDBOX_LABEL: meta["name"]},
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
                SANDBOX_LABEL: sandbox["metadata"]["name"],
            },
            "annotations": objects.user_keys(meta.get("annotations")),
        },
        "spec": claim_template["spec"],
    }


def bound_warm_pod(request: SyncRequest) -> KubeObject | None:
    """The pool pod bound to this sandbox, if any (pool pods arrive as related objects).

    Only a pod that its pool controls counts: a pod someone else made with the right labels
    must not receive the sandbox's traffic.
    """
    sandbox = request["parent"]
    pool = objects.labels_of(sandbox).get(POOL_LABEL)
    bound = [
        p
        for p in objects.observed(request, POD, "related")
        if objects.labels_of(p).get(SANDBOX_LABEL) == sandbox["metadata"]["name"]
        and objects.controller_of(p) == ("SandboxWarmPool", pool)
        and not objects.is_deleting(p)
    ]
    return bound[0] if bound else None


def free_warm_pods(request: SyncRequest) -> list[KubeObject]:
    return [
        p
        for p in objects.observed(request, POD, "related")
        if SANDBOX_LABEL not in objects.labels_of(p) and objects.pod_is_ready(p)
    ]


def sync(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    sandbox = request["parent"]
    meta = sandbox["metadata"]
    problems = spec_problems(sandbox)
    if problems:
        # A 200 without children deletes them: keep what exists, report the spec.
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now
        )

    name, namespace = meta["name"], meta.get("namespace", "default")
    children = [desired_pvc(t, sandbox) for t in sandbox["spec"].get("volumeClaimTemplates", [])]
    status: dict[str, Any] = {"replicas": 0, "selector": f"{SANDBOX_LABEL}={name}", "podIPs": []}

    def ready(ok: bool, reason: str, message: str) -> None:
        status["conditions"] = objects.ready_conditions(sandbox, ok, reason, message, now=now)

    if objects.sandbox_is_expired(sandbox, now):
        # Past shutdownTime the pod and Service go; volumes stay for whoever needs the data.
        ready(
            False,
            objects.SANDBOX_EXPIRED,
            f"shutdownTime {sandbox['spec']['shutdownTime']} has passed",
        )
        return {"status": status, "children": children}

    children.append(desired_service(sandbox))
    status["service"] = name
    status["serviceFQDN"] = f"{name}.{namespace}.svc.{settings['cluster_domain']}"
    deadline = objects.sandbox_shutdown_at(sandbox)
    resync = [(deadline - now).total_seconds() if deadline else None]

    own_pod = objects.by_name(objects.observed(request, POD)).get(name)
    pod: KubeObject | None = None
    if objects.sandbox_replicas(sandbox) == 0:
        ready(False, objects.SCALED_TO_ZERO, "spec.replicas is 0: the pod is stopped")
    elif own_pod is not None:
        children.append(desired_pod(sandbox))
        pod = own_pod
    elif (warm := bound_warm_pod(request)) is not None:
        pod = warm
    elif (
        POOL_LABEL in objects.labels_of(sandbox)
        and free_warm_pods(request)
        and (left := settings["warm_pod_grace_seconds"] - objects.age_seconds(sandbox, now)) > 0
    ):
        # A free warm pod exists: give the pool a moment to bind it before starting cold.
        ready(
            False,
            objects.WAITING_FOR_WARM_POD,
            f"waiting for warm pool {objects.labels_of(sandbox)[POOL_LABEL]} to bind a pod",
        )
        resync.append(left)
    else:
        children.append(desired_pod(sandbox))
        ready(False, objects.POD_NOT_READY, f"pod {name} is being created")

    if pod is not None:
        pod_name = pod["metadata"]["name"]
        status.update(podName=pod_name, podIPs=objects.pod_ips(pod), replicas=1)
        if objects.pod_is_ready(pod):
            ready(True, objects.SANDBOX_READY, f"pod {pod_name} is ready")
        else:
            phase = pod.get("status", {}).get("phase", "Pending")
            ready(False, objects.POD_NOT_READY, f"pod {pod_name} is {phase} and not ready")

    response: SyncResponse = {"status": status, "children": children}
    delay = objects.merge_resync(*resync)
    if delay is not None:
        response["resyncAfterSeconds"] = delay
    return response


def customize(request: CustomizeRequest) -> CustomizeResponse:
    """Pods of the sandbox's warm pool, so a binding (a label change) re-syncs this sandbox."""
    sandbox = request["parent"]
    pool = objects.labels_of(sandbox).get(POOL_LABEL)
    if not pool:
        return {"relatedResources": []}
    namespace = sandbox["metadata"].get("namespace", "default")
    return {
        "relatedResources": [objects.related("v1", "pods", namespace, labels={POOL_LABEL: pool})]
    }
