"""Sync and customize hooks for SandboxTemplate: the NetworkPolicy that fences every pod of the
template, and the list of warm pools that serve it.

Served at POST /{sync,customize}/sandboxtemplate by hooks/app.py. Pure: the answer depends only
on the request. Pods made from a template (warm pods and claim sandboxes) carry the label
`agents.x-k8s.io/sandbox-template=<template>`, which the policy selects.

`status.warmPools` names the SandboxWarmPools of the namespace that serve this template. Claims
read it here rather than watching the pools themselves: a pool's status changes with every
binding, and each change would re-sync every claim that watched it; this list changes only when
a pool of the template is created or deleted.

The default policy (hooks/fencing.py): ingress only from the sandbox-router pods; egress only
to public addresses, plus cluster DNS unless the template turns it off. A Sandbox no claim
controls gets a policy of its own instead (hooks/sandbox.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hooks import fencing, objects, schemas
from hooks.objects import NETWORK_POLICY, POOL, TEMPLATE_LABEL
from hooks.typedefs import (
    DEFAULT_SETTINGS,
    CustomizeRequest,
    CustomizeResponse,
    HookSettings,
    KubeObject,
    SyncRequest,
    SyncResponse,
)

KIND = "sandboxtemplate"


def network_policy_name(template: KubeObject) -> str:
    return f"{template['metadata']['name']}-sandboxes"


def policy_settings(template: KubeObject) -> dict[str, Any]:
    given = template["spec"].get("networkPolicy") or {}
    return {
        "enabled": given.get("enabled", True),
        "allowClusterDNS": given.get("allowClusterDNS", True),
        "routerNamespace": given.get("routerNamespace", "default"),
    }


def desired_network_policy(template: KubeObject) -> KubeObject:
    settings = policy_settings(template)
    meta = template["metadata"]
    return fencing.fencing_policy(
        name=network_policy_name(template),
        namespace=meta.get("namespace", "default"),
        labels={TEMPLATE_LABEL: meta["name"]},
        selector={TEMPLATE_LABEL: meta["name"]},
        pod_template=template["spec"]["podTemplate"],
        router_namespace=settings["routerNamespace"],
        allow_cluster_dns=settings["allowClusterDNS"],
    )


def serving_pools(request: SyncRequest) -> list[str]:
    """Names of the pools (related objects) that name this template, are not being deleted and
    have a valid spec; sorted."""
    name = request["parent"]["metadata"]["name"]
    return [
        p["metadata"]["name"]
        for p in objects.observed(request, POOL, "related")
        if ((p.get("spec") or {}).get("sandboxTemplateRef") or {}).get("name") == name
        and not objects.is_deleting(p)
        and not schemas.problems("sandboxwarmpool", p)
    ]


def sync(
    request: SyncRequest, *, now: datetime, settings: HookSettings = DEFAULT_SETTINGS
) -> SyncResponse:
    template = request["parent"]
    problems = schemas.problems(KIND, template)
    if problems:
        return objects.keep_children(
            request, reason=objects.INVALID_SPEC, message="; ".join(problems), now=now,
            extra_status={"warmPools": serving_pools(request)},
        )
    if not policy_settings(template)["enabled"]:
        return {
            "children": [],
            "status": {
                "warmPools": serving_pools(request),
                "conditions": objects.ready_conditions(
                    template,
                    True,
                    objects.NETWORK_POLICY_DISABLED,
                    "spec.networkPolicy.enabled is false: pods of this template are not fenced",
                    now=now,
                )
            },
        }
    policy = desired_network_policy(template)
    applied = bool(objects.observed(request, NETWORK_POLICY))
    message = (
        f"NetworkPolicy {policy['metadata']['name']} fences pods of this template"
        if applied
        else f"NetworkPolicy {policy['metadata']['name']} is being created"
    )
    return {
        "children": [policy],
        "status": {
            "networkPolicy": policy["metadata"]["name"],
            "warmPools": serving_pools(request),
            "conditions": objects.ready_conditions(
                template,
                applied,
                objects.NETWORK_POLICY_READY if applied else objects.NETWORK_POLICY_PENDING,
                message,
                now=now,
            ),
        },
    }


def customize(request: CustomizeRequest) -> CustomizeResponse:
    """The SandboxWarmPools of the template's namespace (few; a pool names its template in its
    spec, which no label selector can match)."""
    template = request["parent"]
    namespace = template["metadata"].get("namespace", "default")
    return {
        "relatedResources": [
            objects.related(objects.EXTENSIONS_API, objects.POOLS, namespace)
        ]
    }
