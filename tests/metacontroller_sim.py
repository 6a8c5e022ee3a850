"""A small in-memory stand-in for Metacontroller + the API server, for scenario tests.

It applies hook answers the way Metacontroller does: children created with a controller
ownerReference and the `controller-uid` label, children missing from an answer deleted (a
child already being deleted is left alone), existing children updated only under the InPlace
strategy (never while being deleted), a child whose name another owner's object still holds
not created (Metacontroller swallows the AlreadyExists and waits for the next sync), status
replaced wholesale, related objects selected by the customize answer, finalize hooks holding a
deleting parent. Like the API server and kube-controller-manager: every object gets a fresh uid
(a name deleted and created again is another object), pods are deleted gracefully (they linger,
terminating, until the kubelet's next round), and the garbage collector removes the dependents
of a parent that is gone one round later, not at once. A sync may read its parent stale (the
status written by the sync before last), as Metacontroller does when its informer lags.

The tests play the kubelet (pods Ready). Every change to a Pod, Service, Sandbox or
SandboxClaim is recorded as a watch event (`events`), so testbed/tenancy_rules.py checks the
same rules here as on the real loop. Real Metacontroller runs in tests/metacontroller/.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hooks import objects, sandbox, sandboxclaim, sandboxtemplate, sandboxwarmpool
from hooks.typedefs import DEFAULT_SETTINGS
from sandbox_common import contract
from testbed.hookrequests import API, KEYS
from testbed.tenancy_rules import Event

Obj = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name
WATCHED = ("Pod", "Service", "Sandbox", "SandboxClaim")  # recorded for the tenancy rules


@dataclass(frozen=True)
class Controller:
    parent: str
    children: dict[str, str]  # child kind -> update strategy
    module: Any
    has_finalize: bool = False


CONTROLLERS = [
    Controller(
        "Sandbox",
        {"Pod": "OnDelete", "Service": "InPlace", "PersistentVolumeClaim": "OnDelete",
         "NetworkPolicy": "InPlace"},
        sandbox,
    ),
    Controller("SandboxClaim", {"Sandbox": "InPlace"}, sandboxclaim),
    Controller("SandboxWarmPool", {"Pod": "InPlace"}, sandboxwarmpool, has_finalize=True),
    Controller("SandboxTemplate", {"NetworkPolicy": "InPlace"}, sandboxtemplate),
]
API_OF = {
    **API,
    "Pod": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
PLURAL_KIND = {
    "pods": "Pod",
    "services": "Service",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    contract.SANDBOXES: contract.SANDBOX_KIND,
    contract.TEMPLATES: contract.TEMPLATE_KIND,
    contract.POOLS: contract.POOL_KIND,
    contract.CLAIMS: contract.CLAIM_KIND,
}


@dataclass
class Cluster:
    now: datetime
    store: dict[Key, Obj] = field(default_factory=dict)
    uids: itertools.count = field(default_factory=itertools.count)
    versions: itertools.count = field(default_factory=lambda: itertools.count(1))
    ips: itertools.count = field(default_factory=lambda: itertools.count(1))
    events: list[Event] = field(default_factory=list)
    deleted_pods: list[Obj] = field(default_factory=list)
    hook_calls: int = 0
    # Called when a pod's deletion is asked for (it then terminates for a round).
    on_delete: list[Callable[[Obj], None]] = field(default_factory=list)
    terminating: dict[str, bool] = field(default_factory=dict)  # pod uid -> seen by a kubelet
    older_status: dict[str, Obj | None] = field(default_factory=dict)  # uid -> status before last

    # ---- API server ------------------------------------------------------------------
    def emit(self, obj: Obj, type_: str) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        if obj["kind"] in WATCHED:
            rv = int(obj["metadata"]["resourceVersion"])
            self.events.append(Event(rv, obj["kind"], type_, copy.deepcopy(obj)))

    def create(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("namespace", "default")
        key = (obj["kind"], meta["namespace"], meta["name"])
        assert key not in self.store, f"{key} already exists"
        meta["uid"] = f"uid-{next(self.uids)}"
        meta["creationTimestamp"] = objects.format_time(self.now)
        meta["generation"] = 1
        self.store[key] = obj
        self.emit(obj, "ADDED")
        return obj

    def get(self, kind: str, name: str, namespace: str = "default") -> Obj | None:
        return self.store.get((kind, namespace, name))

    def by_uid(self, uid: str) -> Obj | None:
        return next((o for o in self.store.values() if o["metadata"]["uid"] == uid), None)

    def list(self, kind: str) -> list[Obj]:
        return sorted(
            (o for (k, _, _), o in self.store.items() if k == kind),
            key=lambda o: o["metadata"]["name"],
        )

    def update_spec(self, kind: str, name: str, spec: Obj) -> None:
        obj = self.store[(kind, "default", name)]
        obj["spec"] = copy.deepcopy(spec)
        obj["metadata"]["generation"] += 1
        self.emit(obj, "MODIFIED")

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        obj = self.store.get((kind, namespace, name))
        if obj is not None:
            self.delete_object(obj)

    def delete_object(self, obj: Obj) -> None:
        """A DELETE: pods and parents with a finalize hook linger; the rest go at once."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        controller = next((c for c in CONTROLLERS if c.parent == obj["kind"]), None)
        if obj["kind"] == "Pod" or (controller and controller.has_finalize):
            meta["deletionTimestamp"] = objects.format_time(self.now)
            if obj["kind"] == "Pod":
                self.terminating[meta["uid"]] = False
                for hook in self.on_delete:
                    hook(obj)
            self.emit(obj, "MODIFIED")
        else:
            self.remove(obj)

    def remove(self, obj: Obj) -> None:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if self.store.get(key) is not obj:
            return
        del self.store[key]
        if obj["kind"] == "Pod":
            self.deleted_pods.append(obj)
        self.emit(obj, "DELETED")

    @staticmethod
    def owner_uid(obj: Obj) -> str | None:
        refs = obj["metadata"].get("ownerReferences") or []
        return next((r["uid"] for r in refs if r.get("controller")), None)

    def collect_garbage(self) -> None:
        """kube-controller-manager's garbage collector: dependents of owners that are gone."""
        live = {o["metadata"]["uid"] for o in self.store.values()}
        for obj in list(self.store.values()):
            owner = self.owner_uid(obj)
            if owner is not None and owner not in live:
                self.delete_object(obj)

    # ---- kubelet ---------------------------------------------------------------------
    def kubelet(self, *, start_pods: bool = True) -> None:
        """Finish deletions asked for before the last round; make new pods Running and Ready."""
        for pod in self.list("Pod"):
            uid = pod["metadata"]["uid"]
            if uid in self.terminating:
                if self.terminating[uid]:
                    del self.terminating[uid]
                    self.remove(pod)
                else:
                    self.terminating[uid] = True
            elif start_pods and not objects.pod_is_ready(pod):
                n = next(self.ips)
                ip = f"10.1.{n // 250}.{n % 250 + 1}"
                pod["status"] = {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                self.emit(pod, "MODIFIED")

    def make_pods_ready(self) -> None:
        self.kubelet()

    # ---- Metacontroller --------------------------------------------------------------
    def snapshot(self) -> str:
        return json.dumps(sorted((list(k), o) for k, o in self.store.items()), sort_keys=True)

    def related(self, parent: Obj, controller: Controller) -> dict[str, dict[str, Obj]]:
        customize = getattr(controller.module, "customize", None)
        if customize is None:
            return {}
        rules = customize({"controller": {}, "parent": parent})
        found: dict[str, dict[str, Obj]] = {}
        for rule in rules["relatedResources"]:
            kind = PLURAL_KIND[rule["resource"]]
            for obj in self.list(kind):
                if obj["metadata"]["namespace"] != rule.get("namespace", "default"):
                    continue
                if "names" in rule and obj["metadata"]["name"] not in rule["names"]:
                    continue
                wanted = rule.get("labelSelector", {}).get("matchLabels", {})
                if any(objects.labels_of(obj).get(k) != v for k, v in wanted.items()):
                    continue
                found.setdefault(KEYS[kind], {})[obj["metadata"]["name"]] = copy.deepcopy(obj)
        return found

    def sync(self, parent: Obj, controller: Controller, *, stale: bool = False) -> bool:
        """One sync of one parent; True when anything changed. `stale`: the hook reads the
        parent's status as it was before the last write (if there was one)."""
        before = self.snapshot()
        uid = parent["metadata"]["uid"]
        children = [o for o in self.store.values() if self.owner_uid(o) == uid]
        finalizing = bool(parent["metadata"].get("deletionTimestamp"))
        seen = copy.deepcopy(parent)
        if stale and uid in self.older_status:
            seen.pop("status", None)
            if self.older_status[uid] is not None:
                seen["status"] = copy.deepcopy(self.older_status[uid])
        request = {
            "controller": {},
            "parent": seen,
            "children": {},
            "related": self.related(seen, controller),
            "finalizing": finalizing,
        }
        for child in children:
            request["children"].setdefault(KEYS[child["kind"]], {})[child["metadata"]["name"]] = (
                copy.deepcopy(child)
            )
        hook = controller.module.finalize if finalizing else controller.module.sync
        answer = hook(request, now=self.now, settings=DEFAULT_SETTINGS)
        self.hook_calls += 1
        json.dumps(answer)  # must be serialisable, as over HTTP
        desired = {(c["kind"], c["metadata"]["name"]): c for c in answer["children"]}
        assert len(desired) == len(answer["children"]), "duplicate child in answer"
        for child in children:
            if (child["kind"], child["metadata"]["name"]) not in desired:
                self.delete_object(child)
        for (kind, name), want in desired.items():
            assert kind in controller.children, f"{controller.parent} returned a {kind}"
            namespace = parent["metadata"]["namespace"]
            current = self.store.get((kind, namespace, name))
            if current is None:
                child = {**copy.deepcopy(want), "apiVersion": API_OF[kind]}
                child["metadata"].setdefault("labels", {})["controller-uid"] = uid
                child["metadata"]["ownerReferences"] = [
                    {
                        "apiVersion": parent["apiVersion"],
                        "kind": parent["kind"],
                        "uid": uid,
                        "name": parent["metadata"]["name"],
                        "controller": True,
                    }
                ]
                child["metadata"].setdefault("annotations", {})[objects.LAST_APPLIED] = (
                    json.dumps(want, sort_keys=True)
                )
                self.create(child)
            elif self.owner_uid(current) != uid:
                continue  # AlreadyExists: Metacontroller swallows it; a later sync tries again
            elif current["metadata"].get("deletionTimestamp"):
                continue  # Metacontroller never updates a child pending deletion
            elif controller.children[kind] == "InPlace":
                meta = current["metadata"]
                applied = json.loads(meta["annotations"][objects.LAST_APPLIED])
                if current["kind"] == "Pod":
                    assert want.get("spec") == applied.get("spec"), "pod specs are immutable"
                else:
                    current["spec"] = copy.deepcopy(want.get("spec"))
                labels = {**want["metadata"].get("labels", {}), "controller-uid": uid}
                # A 3-way merge: keys someone else wrote (never in last-applied) stay.
                others = {k: v for k, v in (meta.get("annotations") or {}).items()
                          if k not in (applied["metadata"].get("annotations") or {})
                          and k != objects.LAST_APPLIED}
                annotations = {
                    **others,
                    **want["metadata"].get("annotations", {}),
                    objects.LAST_APPLIED: json.dumps(want, sort_keys=True),
                }
                if (meta.get("labels"), meta.get("annotations")) != (labels, annotations) or (
                    current["kind"] != "Pod" and current["spec"] != applied.get("spec")
                ):
                    meta["labels"], meta["annotations"] = labels, annotations
                    self.emit(current, "MODIFIED")
        current_parent = self.get(parent["kind"], parent["metadata"]["name"])
        if current_parent is not None and current_parent["metadata"]["uid"] == uid:
            if current_parent.get("status") != answer["status"]:
                self.older_status[uid] = copy.deepcopy(current_parent.get("status"))
                current_parent["status"] = copy.deepcopy(answer["status"])
                self.emit(current_parent, "MODIFIED")
            if finalizing and answer.get("finalized"):
                self.remove(current_parent)
        return before != self.snapshot()

    def round(self, *, kubelet: bool = True, stale: bool = False) -> bool:
        """Every parent synced once, then the garbage collector and the kubelet; True when
        anything changed."""
        before = self.snapshot()
        for controller in CONTROLLERS:
            for parent in self.list(controller.parent):
                current = self.get(parent["kind"], parent["metadata"]["name"])
                if current is not None and current["metadata"]["uid"] == parent["metadata"]["uid"]:
                    self.sync(current, controller, stale=stale)
        self.collect_garbage()
        self.kubelet(start_pods=kubelet)
        return before != self.snapshot()

    def settle(self, *, rounds: int = 40, kubelet: bool = True) -> int:
        """Sync every parent until nothing changes; returns the rounds it took."""
        for round_ in range(1, rounds + 1):
            if not self.round(kubelet=kubelet):
                return round_
        raise AssertionError(f"no fixpoint after {rounds} rounds")

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
