"""Builders of Metacontroller hook requests, shaped exactly like the real ones.

Children and related objects are grouped by "Kind.apiVersion", then keyed by name (v1 hooks);
every object carries the metadata the API server would give it (uid, creationTimestamp,
ownerReferences with controller: true for children).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from sandbox_common import contract

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "requests"
CREATED = "2026-01-01T00:00:00Z"

SEED_POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"sandbox": "python-sandbox-example"}},
    "spec": {
        "runtimeClassName": "gvisor",
        "containers": [
            {
                "name": "python-runtime",
                "image": "registry.k8s.io/agent-sandbox/python-runtime-sandbox:v0.1.0",
                "ports": [{"containerPort": 8888}],
                "readinessProbe": {
                    "httpGet": {"path": "/", "port": 8888},
                    "initialDelaySeconds": 0,
                    "periodSeconds": 1,
                },
                "resources": {
                    "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "512Mi"}
                },
            }
        ],
        "restartPolicy": "OnFailure",
    },
}

KEYS = {
    "Pod": "Pod.v1",
    "Service": "Service.v1",
    "PersistentVolumeClaim": "PersistentVolumeClaim.v1",
    "NetworkPolicy": "NetworkPolicy.networking.k8s.io/v1",
    contract.SANDBOX_KIND: contract.SANDBOX_KEY,
    contract.TEMPLATE_KIND: contract.TEMPLATE_KEY,
    contract.POOL_KIND: contract.POOL_KEY,
    contract.CLAIM_KIND: f"{contract.CLAIM_KIND}.{contract.EXTENSIONS_API}",
}
API = {
    contract.SANDBOX_KIND: contract.SANDBOX_API,
    contract.TEMPLATE_KIND: contract.EXTENSIONS_API,
    contract.POOL_KIND: contract.EXTENSIONS_API,
    contract.CLAIM_KIND: contract.EXTENSIONS_API,
}


def resource(
    kind: str,
    name: str,
    spec: dict[str, Any],
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    created: str = CREATED,
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One of our custom resources as the API server returns it."""
    obj: dict[str, Any] = {
        "apiVersion": API[kind],
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{kind.lower()}-{name}",
            "generation": generation,
            "resourceVersion": "1000",
            "creationTimestamp": created,
        },
        "spec": copy.deepcopy(spec),
    }
    if labels:
        obj["metadata"]["labels"] = dict(labels)
    if status is not None:
        obj["status"] = status
    return obj


def sandbox(name: str = "my-sandbox", **spec_and_meta: Any) -> dict[str, Any]:
    meta = {
        k: spec_and_meta.pop(k)
        for k in ("namespace", "labels", "created", "status")
        if k in spec_and_meta
    }
    spec = {"podTemplate": copy.deepcopy(SEED_POD_TEMPLATE), **spec_and_meta}
    return resource("Sandbox", name, spec, **meta)


def owned(
    child: dict[str, Any], owner: dict[str, Any], *, uid: str | None = None, created: str = CREATED
) -> dict[str, Any]:
    """A desired child as the API server would return it once applied."""
    obj = copy.deepcopy(child)
    meta = obj["metadata"]
    meta.setdefault("namespace", owner["metadata"].get("namespace", "default"))
    meta["uid"] = uid or f"uid-{obj['kind'].lower()}-{meta['name']}"
    meta["creationTimestamp"] = created
    meta["resourceVersion"] = "2000"
    meta.setdefault("labels", {})["controller-uid"] = owner["metadata"]["uid"]
    meta["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    meta.setdefault("annotations", {})["metacontroller.k8s.io/last-applied-configuration"] = (
        json.dumps(child, sort_keys=True)
    )
    return obj


def with_pod_status(pod: dict[str, Any], *, ready: bool, ip: str = "10.0.0.7") -> dict[str, Any]:
    """A pod as the kubelet reports it."""
    pod = copy.deepcopy(pod)
    pod["status"] = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return pod


def group(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        grouped.setdefault(KEYS[obj["kind"]], {})[obj["metadata"]["name"]] = obj
    return grouped


def controller(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "metacontroller.k8s.io/v1alpha1",
        "kind": "CompositeController",
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"generateSelector": True},
    }


def sync_request(
    parent: dict[str, Any],
    children: list[dict[str, Any]] = (),  # type: ignore[assignment]
    related: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    finalizing: bool = False,
) -> dict[str, Any]:
    return {
        "controller": controller(f"{parent['kind'].lower()}-controller"),
        "parent": parent,
        "children": group(list(children)),
        "related": group(list(related)),
        "finalizing": finalizing,
    }


def load(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())
