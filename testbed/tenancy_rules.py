"""The tenancy rules (one pod per Sandbox uid, ever), checked over a timeline of watch events.

Used by the Metacontroller tier (tests/metacontroller/test_tenancy_trials.py, events from real
watches), the unit tier (tests/metacontroller_sim.py records the same events) and the claim
benchmark (bench/claimlab.py, every event of a run under load). Events of
Pods, Services, Sandboxes and SandboxClaims, sorted by resourceVersion, replay as one timeline
(one etcd gives them one order), so the checker can ask "which pod of this name existed when
that Sandbox said Ready?". Pure: it reads the events and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sandbox_common.contract import POD_NAME_ANNOTATION, SANDBOX_LABEL, SANDBOX_UID_LABEL


@dataclass(frozen=True)
class Event:
    rv: int
    kind: str  # Pod, Service, Sandbox, SandboxClaim
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    seen: float = 0.0  # time.monotonic() when a recorder received it


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def is_ready(obj: dict[str, Any]) -> bool:
    return ready_condition(obj).get("status") == "True"


def controller_uid(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r["uid"] for r in refs if r.get("controller")), None)


@dataclass
class Findings:
    """Violations by rule, and what was seen (for the report)."""

    violations: dict[str, dict[str, str]] = field(default_factory=dict)  # rule -> subject -> detail
    ready_events: int = 0
    sandboxes: int = 0
    pods_bound: int = 0

    involved: dict[str, set[str]] = field(default_factory=dict)  # rule -> Sandbox uids in it

    def add(self, rule: str, subject: str, detail: str, sandboxes: Iterable[str] = ()) -> None:
        """One violation per rule and subject (a Sandbox or pod uid); the first detail kept."""
        self.violations.setdefault(rule, {}).setdefault(subject, detail)
        self.involved.setdefault(rule, set()).update(sandboxes or [subject])

    def count(self) -> int:
        return sum(len(v) for v in self.violations.values())

    def summary(self, limit: int = 5) -> str:
        lines = []
        for rule, details in sorted(self.violations.items()):
            lines.append(f"{rule}: {len(details)}")
            lines += [f"    {d}" for d in list(details.values())[:limit]]
        return "\n".join(lines) or "no violations"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_problem(status: dict[str, Any], pods: dict[str, dict[str, Any]]) -> str | None:
    """Why the pod a status names is not one to serve from now (gone, terminating, not Ready,
    other IPs), or None."""
    name = status.get("podName")
    pod = pods.get(name or "")
    if pod is None:
        return f"pod {name!r} does not exist"
    if pod["metadata"].get("deletionTimestamp"):
        return f"pod {name} is terminating"
    if not is_ready(pod):
        return f"pod {name} is not Ready"
    ips = [e.get("ip") for e in (pod.get("status") or {}).get("podIPs") or []]
    if status.get("podIPs") != ips:
        return f"podIPs {status.get('podIPs')} are not pod {name}'s {ips}"
    return None


def check(events: Iterable[Event], *, claim_sandboxes_need_annotation: bool = True) -> Findings:
    """Replay the timeline and report every breach of the tenancy rules:

    - a pod serves at most one Sandbox uid, ever (a Sandbox serves from a pod when its status
      names it with its IPs, which is where the router sends traffic; a Service reaches a pod
      when its selector matches the pod's labels);
    - a Sandbox reports Ready only on a pod that exists, is not terminating, is Ready, and has
      the IPs it reports;
    - once a Sandbox names a pod, it never names another, nor is Ready on another pod of the
      same name;
    - a claim's Sandbox carries the pod-name annotation, naming its pod, whenever it is Ready;
    - a claim is Ready only while its Sandbox names a pod as above;
    - a binding label, once set, never changes.
    """
    found = Findings()
    pods: dict[str, dict[str, Any]] = {}  # by name: the pod of that name now
    services: dict[str, dict[str, Any]] = {}  # by uid
    sandboxes: dict[str, dict[str, Any]] = {}  # by uid
    served: dict[str, set[str]] = {}  # pod uid -> Sandbox uids that served from it
    reached: dict[str, set[str]] = {}  # pod uid -> owners (Sandbox uids) of Services matching it
    named: dict[str, str] = {}  # Sandbox uid -> the pod name it reported first
    serving_uid: dict[str, str] = {}  # Sandbox uid -> pod uid of its first Ready
    binding: dict[str, tuple[str | None, str | None]] = {}  # pod uid -> first binding labels
    seen_sandboxes: set[str] = set()
    # Indexes, so a timeline of thousands of Services and pods replays in linear time: a
    # Service by the first item of its selector, a pod by each of its labels.
    services_by_label: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    pods_by_label: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def first_item(service: dict[str, Any]) -> tuple[str, str] | None:
        selector = service["spec"].get("selector") or {}
        return min(selector.items()) if selector else None

    def index_pod(pod: dict[str, Any], add: bool) -> None:
        for item in (pod["metadata"].get("labels") or {}).items():
            group = pods_by_label.setdefault(item, {})
            if add:
                group[pod["metadata"]["name"]] = pod
            else:
                group.pop(pod["metadata"]["name"], None)

    def note_reach(service: dict[str, Any], pod: dict[str, Any]) -> None:
        owner = controller_uid(service)
        if owner and not pod["metadata"].get("deletionTimestamp") and selects(
                service["spec"].get("selector") or {}, pod["metadata"].get("labels") or {}):
            reached.setdefault(pod["metadata"]["uid"], set()).add(owner)

    for event in events:
        obj, meta = event.obj, event.obj["metadata"]
        if event.kind == "Pod":
            labels = meta.get("labels") or {}
            if event.type == "DELETED":
                if pods.get(meta["name"], {}).get("metadata", {}).get("uid") == meta["uid"]:
                    index_pod(pods.pop(meta["name"]), add=False)
                continue
            if meta["name"] in pods:
                index_pod(pods[meta["name"]], add=False)
            pods[meta["name"]] = obj
            index_pod(obj, add=True)
            marks = (labels.get(SANDBOX_LABEL), labels.get(SANDBOX_UID_LABEL))
            first = binding.setdefault(meta["uid"], marks)
            if first == (None, None) and marks != (None, None):
                binding[meta["uid"]] = marks
            elif first != (None, None) and marks != first:
                found.add("binding label changed", meta["uid"],
                          f"pod {meta['name']} ({meta['uid'][:8]}) from {first} to {marks}",
                          served.get(meta["uid"], set()))
            for item in labels.items():
                for service in list(services_by_label.get(item, {}).values()):
                    note_reach(service, obj)
        elif event.kind == "Service":
            previous = services.pop(meta["uid"], None)
            if previous is not None and (item := first_item(previous)) is not None:
                services_by_label.get(item, {}).pop(meta["uid"], None)
            if event.type == "DELETED":
                continue
            services[meta["uid"]] = obj
            if (item := first_item(obj)) is not None:
                services_by_label.setdefault(item, {})[meta["uid"]] = obj
                for pod in list(pods_by_label.get(item, {}).values()):
                    note_reach(obj, pod)
        elif event.kind == "Sandbox":
            uid = meta["uid"]
            if event.type == "DELETED":
                sandboxes.pop(uid, None)
                continue
            seen_sandboxes.add(uid)
            sandboxes[uid] = obj
            status = obj.get("status") or {}
            pod_name = status.get("podName")
            where = f"sandbox {meta['name']} ({uid[:8]}) rv {event.rv}"
            if pod_name:
                first_name = named.setdefault(uid, pod_name)
                if first_name != pod_name:
                    found.add("sandbox switched pods", uid, f"{where}: {first_name} -> {pod_name}")
            pod = pods.get(pod_name or "")
            if pod is not None and status.get("podIPs") and pod_problem(status, pods) in (
                    None, f"pod {pod_name} is not Ready", f"pod {pod_name} is terminating"):
                pod_uid = pod["metadata"]["uid"]
                served.setdefault(pod_uid, set()).add(uid)
                if len(served[pod_uid]) > 1:
                    found.add("pod served two sandbox uids", pod_uid,
                              f"pod {pod_name} ({pod_uid[:8]}) served {sorted(served[pod_uid])}",
                              served[pod_uid])
            if not is_ready(obj):
                continue
            found.ready_events += 1
            problem = pod_problem(status, pods)
            if problem is not None:
                found.add("ready on a pod it cannot serve from", uid, f"{where}: {problem}")
                continue
            pod_uid = pods[pod_name]["metadata"]["uid"]
            if serving_uid.setdefault(uid, pod_uid) != pod_uid:
                found.add("sandbox switched pods", uid,
                          f"{where}: pod {pod_name} is now another pod ({pod_uid[:8]})")
            owner = obj["metadata"].get("ownerReferences") or []
            if claim_sandboxes_need_annotation and any(
                    r.get("kind") == "SandboxClaim" and r.get("controller") for r in owner):
                annotation = (meta.get("annotations") or {}).get(POD_NAME_ANNOTATION)
                if annotation != pod_name:
                    found.add("claim's sandbox ready without its pod-name annotation", uid,
                              f"{where}: annotation {annotation!r}, pod {pod_name}")
        elif event.kind == "SandboxClaim":
            if event.type == "DELETED" or not is_ready(obj):
                continue
            mine = [s for s in sandboxes.values() if controller_uid(s) == meta["uid"]]
            problem = pod_problem(mine[0].get("status") or {}, pods) if mine else "no sandbox"
            if problem is not None:
                found.add("claim ready without a pod to serve from", meta["uid"],
                          f"claim {meta['name']} ({meta['uid'][:8]}) rv {event.rv}: {problem}",
                          [s["metadata"]["uid"] for s in mine])

    for pod_uid, owners in reached.items():
        others = owners | served.get(pod_uid, set())
        if len(others) > 1:
            found.add("a service reaches a pod of another sandbox uid", pod_uid,
                      f"pod {pod_uid[:8]} reached by services of {sorted(owners)}, served "
                      f"{sorted(served.get(pod_uid, set()))}", others)
    found.sandboxes = len(seen_sandboxes)
    found.pods_bound = sum(1 for marks in binding.values() if marks != (None, None))
    return found


def leftover_bound_pods(events: Iterable[Event]) -> list[str]:
    """Pods, at the end of the timeline, that carry a binding but that no live Sandbox
    reports: each should have been deleted (a bound pod is never handed on)."""
    pods: dict[str, dict[str, Any]] = {}
    sandboxes: dict[str, dict[str, Any]] = {}
    for event in events:
        table = pods if event.kind == "Pod" else sandboxes if event.kind == "Sandbox" else None
        if table is None:
            continue
        if event.type == "DELETED":
            table.pop(event.obj["metadata"]["uid"], None)
        else:
            table[event.obj["metadata"]["uid"]] = event.obj
    reported = {(s["metadata"]["name"], (s.get("status") or {}).get("podName"))
                for s in sandboxes.values()}
    reported_by_uid = {(uid, (s.get("status") or {}).get("podName"))
                       for uid, s in sandboxes.items()}
    left = []
    for pod in pods.values():
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if meta.get("deletionTimestamp") or SANDBOX_LABEL not in labels:
            continue
        if SANDBOX_UID_LABEL in labels:
            owner, serving = labels[SANDBOX_UID_LABEL], reported_by_uid
        else:
            owner, serving = labels[SANDBOX_LABEL], reported
        if (owner, meta["name"]) not in serving:
            left.append(f"pod {meta['name']} bound to {owner} is not serving it")
    return left
