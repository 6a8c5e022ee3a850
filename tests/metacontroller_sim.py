"""A small in-memory stand-in for Metacontroller + the API server, for scenario tests.

It applies hook answers the way Metacontroller does: children created with a controller
ownerReference and the `controller-uid` label, children missing from an answer deleted,
existing children updated only under the InPlace strategy, status replaced wholesale,
related objects selected by the customize answer, finalize hooks holding a deleting parent,
and the garbage collector deleting the children of a parent that is gone. The tests play the
kubelet (pods Ready). Real Metacontroller runs in tests/metacontroller/.
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
from tests.hookrequests import API, KEYS

Obj = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class Controller:
    parent: str
    children: dict[str, str]  # child kind -> update strategy
    module: Any
    has_finalize: bool = False


CONTROLLERS = [
    Controller(
        "Sandbox",
        {"Pod": "OnDelete", "Service": "InPlace", "PersistentVolumeClaim": "OnDelete"},
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
    "sandboxes": "Sandbox",
    "sandboxtemplates": "SandboxTemplate",
    "sandboxwarmpools": "SandboxWarmPool",
    "sandboxclaims": "SandboxClaim",
}


@dataclass
class Cluster:
    now: datetime
    store: dict[Key, Obj] = field(default_factory=dict)
    uids: itertools.count = field(default_factory=itertools.count)
    # Every label a pod ever carried under our binding key, by pod uid.
    bindings: dict[str, set[str]] = field(default_factory=dict)
    deleted_pods: list[Obj] = field(default_factory=list)
    hook_calls: int = 0
    on_delete: list[Callable[[Obj], None]] = field(default_factory=list)

    # ---- API server ------------------------------------------------------------------
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
        self.track(obj)
        return obj

    def get(self, kind: str, name: str, namespace: str = "default") -> Obj | None:
        return self.store.get((kind, namespace, name))

    def list(self, kind: str) -> list[Obj]:
        return sorted(
            (o for (k, _, _), o in self.store.items() if k == kind),
            key=lambda o: o["metadata"]["name"],
        )

    def update_spec(self, kind: str, name: str, spec: Obj) -> None:
        obj = self.store[(kind, "default", name)]
        obj["spec"] = copy.deepcopy(spec)
        obj["metadata"]["generation"] += 1

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        obj = self.store.get((kind, namespace, name))
        if obj is None:
            return
        controller = next((c for c in CONTROLLERS if c.parent == kind), None)
        if controller and controller.has_finalize:
            obj["metadata"]["deletionTimestamp"] = objects.format_time(self.now)
        else:
            self.remove(obj)

    def remove(self, obj: Obj) -> None:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if self.store.pop(key, None) is None:
            return
        if obj["kind"] == "Pod":
            self.deleted_pods.append(obj)
        for hook in self.on_delete:
            hook(obj)
        # Garbage collector: dependents of a removed owner go too.
        for child in [
            o for o in self.store.values() if self.owner_uid(o) == obj["metadata"]["uid"]
        ]:
            self.remove(child)

    @staticmethod
    def owner_uid(obj: Obj) -> str | None:
        refs = obj["metadata"].get("ownerReferences") or []
        return next((r["uid"] for r in refs if r.get("controller")), None)

    def track(self, obj: Obj) -> None:
        if obj["kind"] == "Pod":
            bound = objects.labels_of(obj).get(objects.SANDBOX_LABEL)
            history = self.bindings.setdefault(obj["metadata"]["uid"], set())
            if bound:
                history.add(bound)

    # ---- kubelet ---------------------------------------------------------------------
    def make_pods_ready(self) -> None:
        for index, pod in enumerate(self.list("Pod")):
            if not objects.pod_is_ready(pod):
                ip = f"10.1.{index // 250}.{index % 250 + 1}"
                pod["status"] = {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }

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

    def sync(self, parent: Obj, controller: Controller) -> bool:
        """One sync of one parent; True when anything changed."""
        before = self.snapshot()
        uid = parent["metadata"]["uid"]
        children = [o for o in self.store.values() if self.owner_uid(o) == uid]
        finalizing = bool(parent["metadata"].get("deletionTimestamp"))
        request = {
            "controller": {},
            "parent": copy.deepcopy(parent),
            "children": {},
            "related": self.related(parent, controller),
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
                self.remove(child)
        for (kind, name), want in desired.items():
            assert kind in controller.children, f"{controller.parent} returned a {kind}"
            namespace = parent["metadata"]["namespace"]
            current = self.store.get((kind, namespace, name))
            if current is None:
                created = self.create({**copy.deepcopy(want), "apiVersion": API_OF[kind]})
                created["metadata"].setdefault("labels", {})["controller-uid"] = uid
                created["metadata"]["ownerReferences"] = [
                    {
                        "apiVersion": parent["apiVersion"],
                        "kind": parent["kind"],
                        "uid": uid,
                        "name": parent["metadata"]["name"],
                        "controller": True,
                    }
                ]
                created["metadata"].setdefault("annotations", {})[objects.LAST_APPLIED] = (
                    json.dumps(want, sort_keys=True)
                )
            elif self.owner_uid(current) != uid:
                raise AssertionError(f"{controller.parent} claimed {kind}/{name} owned by another")
            elif controller.children[kind] == "InPlace":
                meta = current["metadata"]
                applied = json.loads(meta["annotations"][objects.LAST_APPLIED])
                if current["kind"] == "Pod":
                    assert want.get("spec") == applied.get("spec"), "pod specs are immutable"
                else:
                    current["spec"] = copy.deepcopy(want.get("spec"))
                meta["labels"] = {**want["metadata"].get("labels", {}), "controller-uid": uid}
                meta["annotations"] = {
                    **want["metadata"].get("annotations", {}),
                    objects.LAST_APPLIED: json.dumps(want, sort_keys=True),
                }
                self.track(current)
        if (current_parent := self.get(parent["kind"], parent["metadata"]["name"])) is not None:
            current_parent["status"] = copy.deepcopy(answer["status"])
            if finalizing and answer.get("finalized"):
                self.remove(current_parent)
        return before != self.snapshot()

    def settle(self, *, rounds: int = 30, kubelet: bool = True) -> int:
        """Sync every parent until nothing changes; returns the rounds it took."""
        for round_ in range(1, rounds + 1):
            changed = False
            for controller in CONTROLLERS:
                for parent in self.list(controller.parent):
                    if self.get(parent["kind"], parent["metadata"]["name"]) is not None:
                        changed |= self.sync(parent, controller)
            if kubelet:
                self.make_pods_ready()
            if not changed:
                return round_
        raise AssertionError(f"no fixpoint after {rounds} rounds")

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
