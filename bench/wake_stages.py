"""Where a wake's time goes: the milestones of one wake on request, from long-lived watches.

Used by bench/bench_idle.py. `Watches` keeps one watch on pods and one on Sandboxes of a
namespace, stamping every event with this process's clock on arrival; `milestones` reads the
events of one Sandbox uid between a request's send and its answer and says when each step of
the wake was first seen:

    sent -> wake written (the router's annotation) -> resumed (the hook answered, its status
    written) -> pod created -> pod bound -> pod Running (the kubelet stand-in started the
    runtime) -> pod Ready -> Sandbox Ready -> answered

A warm wake has no pod created, bound or Running step (its pod is bound by a label). Times
include the watch's own delivery (a few ms each). It must not call the API server beyond its
two watches, nor assert anything about speed (it measures).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from sandbox_common.contract import (
    GROUP,
    READY,
    SANDBOX_UID_LABEL,
    SANDBOXES,
    SUSPENDED,
    VERSION,
    WAKE_ANNOTATION,
)

MILESTONES = ("sent", "wake_written", "resumed", "pod_created", "pod_bound", "pod_running",
              "pod_ready", "sandbox_ready", "answered")
STAGES = {
    "wake_written": "request sent -> wake annotation written (router)",
    "resumed": "wake written -> Sandbox reports Resumed (Metacontroller sync + hook)",
    "pod_created": "resumed -> pod created",
    "pod_bound": "pod created -> pod bound to the node",
    "pod_running": "pod bound -> pod Running (runtime process started)",
    "pod_ready": "pod Running -> pod Ready (runtime answers)",
    "sandbox_ready": "pod Ready -> Sandbox Ready (Metacontroller sync + hook)",
    "answered": "Sandbox Ready -> answer (router notices, forwards, runtime runs)",
}


@dataclass(frozen=True)
class Seen:
    at: float  # time.perf_counter() on arrival
    kind: str  # "pod" or "sandbox"
    event: str
    obj: dict[str, Any]


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


class Watches:
    """A watch on pods and one on Sandboxes of `namespace`, each event kept with its arrival
    time; start() them, stop() them."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.events: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.watches: list[Any] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        from kubernetes import watch

        sources = (
            ("pod", self.core.list_namespaced_pod, (self.namespace,)),
            ("sandbox", self.custom.list_namespaced_custom_object,
             (GROUP, VERSION, self.namespace, SANDBOXES)),
        )
        for kind, func, args in sources:
            w = watch.Watch()
            self.watches.append(w)
            thread = threading.Thread(target=self._run, args=(w, kind, func, args),
                                      daemon=True, name=f"wake-stages-{kind}")
            self.threads.append(thread)
            thread.start()

    def _run(self, w: Any, kind: str, func: Any, args: tuple[Any, ...]) -> None:
        while not self.stopping.is_set():
            try:
                for event in w.stream(func, *args, timeout_seconds=60, deserialize=False):
                    seen = Seen(time.perf_counter(), kind, event["type"], event["object"])
                    with self.lock:
                        self.events.append(seen)
            except Exception:  # stopped, or the stream broke: open it again
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

    def stop(self) -> None:
        self.stopping.set()
        for w in self.watches:
            w.stop()
        for thread in self.threads:
            thread.join(5)

    def between(self, start: float, end: float) -> list[Seen]:
        with self.lock:
            return [e for e in self.events if start <= e.at <= end]


def milestones(watches: Watches, uid: str, sent: float, answered: float) -> dict[str, float]:
    """When each milestone of the wake of Sandbox `uid` was first seen (perf_counter seconds;
    absent when not seen in the window, e.g. the pod steps of a warm wake)."""
    times = {"sent": sent, "answered": answered}
    pod_uid = ""

    def first(key: str, at: float) -> None:
        times.setdefault(key, at)

    for seen in watches.between(sent, answered):
        obj, meta = seen.obj, seen.obj.get("metadata") or {}
        if seen.kind == "sandbox" and meta.get("uid") == uid:
            suspended = _condition(obj, SUSPENDED)
            if (meta.get("annotations") or {}).get(WAKE_ANNOTATION) == \
                    suspended.get("lastTransitionTime") and suspended.get("status") == "True":
                first("wake_written", seen.at)
            if suspended.get("status") == "False":
                first("resumed", seen.at)
            if _condition(obj, READY).get("status") == "True":
                first("sandbox_ready", seen.at)
        elif seen.kind == "pod" and seen.event != "DELETED" and \
                (meta.get("labels") or {}).get(SANDBOX_UID_LABEL) == uid and \
                not meta.get("deletionTimestamp"):
            if seen.event == "ADDED" and not pod_uid:
                pod_uid = str(meta.get("uid"))
                first("pod_created", seen.at)
            if meta.get("uid") != pod_uid:
                continue
            if (obj.get("spec") or {}).get("nodeName"):
                first("pod_bound", seen.at)
            if (obj.get("status") or {}).get("podIP"):
                first("pod_running", seen.at)
            if _condition(obj, READY).get("status") == "True":
                first("pod_ready", seen.at)
    return times


def stage_seconds(times: dict[str, float]) -> dict[str, float]:
    """Seconds in each stage: from the latest earlier milestone seen to this one."""
    out: dict[str, float] = {}
    previous = times["sent"]
    for key in MILESTONES[1:]:
        if key in times:
            out[key] = max(0.0, times[key] - previous)
            previous = max(previous, times[key])
    return out


def summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: the median and max in ms over the samples that saw it, and how many did."""
    out: dict[str, dict[str, float]] = {}
    for key in MILESTONES[1:]:
        values = [s[key] * 1e3 for s in samples if key in s]
        if values:
            out[key] = {"p50_ms": round(statistics.median(values), 1),
                        "max_ms": round(max(values), 1), "samples": len(values)}
    return out


NAMES = {"wake_written": "wake written", "resumed": "Resumed", "pod_created": "pod created",
         "pod_bound": "pod bound", "pod_running": "pod Running", "pod_ready": "pod Ready",
         "sandbox_ready": "Sandbox Ready", "answered": "answered"}


def describe(stats: dict[str, dict[str, float]]) -> str:
    """One line for the notes: the median time until each milestone, from the one before it
    (a warm wake has no pod steps: its Sandbox Ready counts from Resumed)."""
    return "; ".join(f"until {NAMES[k]} {v['p50_ms']:.0f} ms" for k, v in stats.items())
