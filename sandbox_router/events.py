"""Kubernetes Events for the lifecycle of Sandboxes, recorded from the router's watch.

``resolve.KubernetesSource`` hands every Sandbox object its watch delivers to ``Recorder.see``;
a daemon thread posts an Event for each lifecycle step the object shows (created, served by a
warm pod or its own, ready, suspended, resumed, expired), so `kubectl describe sandbox` tells
the story. The hooks cannot do this (they make no API calls, and an Event is no child of
theirs); the router already watches every Sandbox.

Each step is read from the object itself (a condition's lastTransitionTime, the pod's name), so
its Event has a deterministic name: another router replica, or this one after a restart, that
sees the same step gets AlreadyExists and writes nothing. A step seen again is skipped in
memory (bounded). It must not block the watch (a bounded queue; a full one drops), and it never
reads or writes anything but Events.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sandbox_common.contract import READY, RESUMED, SANDBOX_EXPIRED, SUSPENDED

log = logging.getLogger(__name__)

QUEUE = 1024
REMEMBERED = 16384
COMPONENT = "sandbox-router"


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return {}


def steps(obj: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(reason, message, since) of every lifecycle step the Sandbox object shows now."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        status = {}
    name = str(meta.get("name") or "")
    found = [("Created", f"sandbox {name} created", str(meta.get("creationTimestamp") or ""))]
    pod = status.get("podName")
    ready = _condition(status, READY)
    suspended = _condition(status, SUSPENDED)
    if isinstance(pod, str) and pod:
        # Since it last looked for a pod: its creation, or its resume after a suspension.
        since = str((suspended.get("lastTransitionTime") if suspended.get("reason") == RESUMED
                     else meta.get("creationTimestamp")) or "")
        if pod == name:
            found.append(("StartedPod", f"served by its own pod {pod} (cold)", since))
        else:
            found.append(("BoundWarmPod", f"served by warm pod {pod}", since))
    def step(reason: str, condition: Mapping[str, Any]) -> tuple[str, str, str]:
        return (reason, str(condition.get("message") or reason.lower()),
                str(condition.get("lastTransitionTime") or ""))

    if ready.get("status") == "True":
        found.append(step("Ready", ready))
    if ready.get("reason") == SANDBOX_EXPIRED:
        found.append(step("Expired", ready))
    if suspended.get("status") == "True":
        found.append(step("Suspended", suspended))
    elif suspended.get("reason") == RESUMED:
        found.append(step("Resumed", suspended))
    return found


def event_name(name: str, uid: str, reason: str, message: str, since: str) -> str:
    digest = hashlib.sha256("\x00".join((uid, reason, message, since)).encode()).hexdigest()
    return f"{name}.{digest[:16]}"


class Recorder:
    """Posts Events for the steps it sees (see the module docstring). start() it once."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.pending: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.instance = socket.gethostname()
        self.posted = 0
        self.dropped = 0

    def see(self, obj: Mapping[str, Any]) -> None:
        """Called from the watch thread with each Sandbox object it applies."""
        meta = obj.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
        if not (isinstance(name, str) and isinstance(namespace, str) and isinstance(uid, str)):
            return
        for reason, message, since in steps(obj):
            key = event_name(name, uid, reason, message, since)
            if key in self.seen:
                continue
            self.seen[key] = None
            while len(self.seen) > REMEMBERED:
                self.seen.popitem(last=False)
            moment = since or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": key, "namespace": namespace},
                "involvedObject": {"apiVersion": str(obj.get("apiVersion") or ""),
                                   "kind": "Sandbox", "name": name, "namespace": namespace,
                                   "uid": uid},
                "reason": reason, "message": message[:1024], "type": "Normal", "count": 1,
                "firstTimestamp": moment, "lastTimestamp": moment,
                "source": {"component": COMPONENT},
                "reportingComponent": f"agents.x-k8s.io/{COMPONENT}",
                "reportingInstance": self.instance[:128],
            }
            try:
                self.pending.put_nowait(body)
            except queue.Full:
                self.dropped += 1

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="sandbox-events").start()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while True:
            body: Any = self.pending.get()
            try:
                self.core.create_namespaced_event(body["metadata"]["namespace"], body)
                self.posted += 1
            except ApiException as exc:
                if exc.status != 409:  # AlreadyExists: another replica, or before a restart
                    log.info("event not recorded", extra={"status": exc.status,
                                                          "reason": body["reason"]})
            except Exception as exc:  # the API server is away: the step is not retried
                log.info("event not recorded", extra={"error": type(exc).__name__})
