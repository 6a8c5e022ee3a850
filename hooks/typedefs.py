"""Shapes of Metacontroller's hook envelopes. Kubernetes objects stay plain dicts."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

KubeObject = dict[str, Any]
# Metacontroller groups children and related objects by "Kind.apiVersion", then by name
# (v1 hooks) or "namespace/name" (v2 hooks). We only ever read the values.
ObjectMap = dict[str, dict[str, KubeObject]]


class SyncRequest(TypedDict):
    controller: KubeObject
    parent: KubeObject
    children: NotRequired[ObjectMap]
    related: NotRequired[ObjectMap]
    finalizing: NotRequired[bool]


class SyncResponse(TypedDict):
    status: dict[str, Any]
    children: list[KubeObject]
    resyncAfterSeconds: NotRequired[float]
    finalized: NotRequired[bool]


class CustomizeRequest(TypedDict):
    controller: KubeObject
    parent: KubeObject


class ResourceRule(TypedDict):
    apiVersion: str
    resource: str
    namespace: NotRequired[str]
    names: NotRequired[list[str]]
    labelSelector: NotRequired[dict[str, Any]]


class CustomizeResponse(TypedDict):
    relatedResources: list[ResourceRule]


class HookSettings(TypedDict):
    """Operator settings every hook receives (from the app's config)."""

    cluster_domain: str  # for Sandbox status.serviceFQDN
    warm_pod_grace_seconds: float  # how long a Sandbox waits for a warm pod before going cold
    # The RuntimeClass of every pod whose template names none (or ""): "" means none at all,
    # the node's default runtime (runc: no gVisor), an operator's deliberate opt-out.
    runtime_class_name: str
    # The namespace of the sandbox-router pods a Sandbox's own NetworkPolicy admits (a
    # template's policy names its own: spec.networkPolicy.routerNamespace).
    router_namespace: str


DEFAULT_SETTINGS: HookSettings = {
    "cluster_domain": "cluster.local",
    "warm_pod_grace_seconds": 15.0,
    "runtime_class_name": "gvisor",
    "router_namespace": "default",
}
