"""Tools of the tenancy trials (tests/metacontroller/test_tenancy_trials.py) and the claim
benchmark (bench/claimlab.py): a recorder of watch events and a kubelet stand-in with graceful
pod termination. The rules they are checked against are in testbed/tenancy_rules.py.

The recorder keeps every event of Pods, Services, Sandboxes and SandboxClaims of one
namespace, from one list on. The kubelet stand-in binds each pod to a node name (so deletion
is graceful, as on a cluster: the pod stays, terminating, until the kubelet confirms) and gives
every pod its own IP, so a Sandbox's podIPs point at exactly one pod.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from sandbox_common import contract
from testbed.tenancy_rules import Event

NODE = "trial-node"


LAST_APPLIED = "metacontroller.k8s.io/last-applied-configuration"


def slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What testbed/tenancy_rules.py reads of an object, without the bulk (managed fields, the
    last-applied annotation, pod and Sandbox specs): the claim benchmark records thousands."""
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    (meta.get("annotations") or {}).pop(LAST_APPLIED, None)
    if kind in ("Pod", "Sandbox"):
        obj.pop("spec", None)
    return obj


class Recorder:
    """Watches the namespace's Pods, Services, Sandboxes and SandboxClaims from one list on.

    With slim=True it keeps only what the tenancy rules read (see slim())."""

    def __init__(self, api_client: Any, namespace: str, *, slim: bool = False) -> None:
        from kubernetes import client

        self.slim = slim
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.events: list[Event] = []
        self.lock = threading.Condition()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.watches: list[Any] = []

    def sources(self) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        ns = self.namespace
        return {
            "Pod": (self.core.list_namespaced_pod, (ns,)),
            "Service": (self.core.list_namespaced_service, (ns,)),
            "Sandbox": (self.custom.list_namespaced_custom_object,
                        (contract.GROUP, contract.VERSION, ns, contract.SANDBOXES)),
            "SandboxClaim": (self.custom.list_namespaced_custom_object,
                             (contract.EXTENSIONS_GROUP, contract.VERSION, ns,
                              contract.CLAIMS)),
        }

    def start(self) -> None:
        for kind, (func, args) in self.sources().items():
            listed = func(*args, _preload_content=False)
            import json

            version = json.loads(listed.data)["metadata"]["resourceVersion"]
            thread = threading.Thread(target=self.run, args=(kind, func, args, version),
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def run(self, kind: str, func: Any, args: tuple[Any, ...], version: str) -> None:
        from kubernetes import watch

        while not self.stopping.is_set():
            stream = watch.Watch()
            self.watches.append(stream)
            try:
                for event in stream.stream(func, *args, resource_version=version,
                                           timeout_seconds=30, deserialize=False):
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    obj = event["object"]
                    if self.slim:
                        obj = slim(kind, obj)
                    version = obj["metadata"]["resourceVersion"]
                    with self.lock:
                        self.events.append(Event(int(version), kind, event["type"], obj,
                                                 time.monotonic()))
                        self.lock.notify_all()
            except Exception:  # the stream ends on stop(); otherwise watch again from version
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

    def wait_for(self, predicate: Any, timeout: float) -> Event | None:
        """The first recorded event (from now on or already) for which predicate holds."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self.lock:
            while True:
                for event in self.events[checked:]:
                    if predicate(event):
                        return event
                checked = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(min(left, 0.5))

    def snapshot(self) -> list[Event]:
        with self.lock:
            return sorted(self.events, key=lambda e: e.rv)

    def stop(self) -> None:
        self.stopping.set()
        for stream in self.watches:
            stream.stop()
        for thread in self.threads:
            thread.join(35)


class GracefulKubelet(threading.Thread):
    """Plays the kubelet: binds each new pod to a node, makes it Running and Ready at an IP of
    its own, and finishes a pod's graceful deletion `grace` seconds after it was asked for."""

    def __init__(self, api_client: Any, namespace: str, grace: float = 0.5) -> None:
        super().__init__(daemon=True)
        from kubernetes import client, watch

        self.core = client.CoreV1Api(api_client)
        self.watch = watch.Watch()
        self.namespace, self.grace = namespace, grace
        self.stopping = threading.Event()
        self.started_pods: set[str] = set()
        self.ending_pods: set[str] = set()
        self.ips: dict[str, str] = {}
        self.timers: list[threading.Timer] = []

    def ip_for(self, uid: str) -> str:
        if uid not in self.ips:
            n = len(self.ips) + 1
            self.ips[uid] = f"10.244.{n // 250}.{n % 250 + 1}"
        return self.ips[uid]

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                for event in self.watch.stream(self.core.list_namespaced_pod, self.namespace,
                                               timeout_seconds=30, deserialize=False):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.handle(event["object"])
            except Exception:
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

    def handle(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid, name = meta["uid"], meta["name"]
        if meta.get("deletionTimestamp"):
            if uid not in self.ending_pods:
                self.ending_pods.add(uid)
                timer = threading.Timer(self.grace, self.finish, (name, uid))
                timer.daemon = True
                self.timers.append(timer)
                timer.start()
            return
        if uid in self.started_pods:
            return
        self.started_pods.add(uid)
        with contextlib.suppress(Exception):  # deleted meanwhile: nothing to start
            if not pod["spec"].get("nodeName"):
                self.core.create_namespaced_pod_binding(
                    name, self.namespace,
                    {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                     "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}},
                    _preload_content=False)
            ip = self.ip_for(uid)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                          for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
            self.core.patch_namespaced_pod_status(name, self.namespace, {
                "metadata": {"uid": uid},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                           "hostIP": "10.0.0.1", "startTime": now, "conditions": conditions}},
                _preload_content=False)

    def finish(self, name: str, uid: str) -> None:
        """The containers are gone: confirm the deletion (grace 0), as the kubelet does."""
        with contextlib.suppress(Exception):
            self.core.delete_namespaced_pod(
                name, self.namespace, grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                _preload_content=False)

    def stop(self) -> None:
        """Stop watching; pods still terminating are finished at once."""
        self.stopping.set()
        self.watch.stop()
        self.join(35)
        for timer in self.timers:
            timer.cancel()
        with contextlib.suppress(Exception):
            pods = self.core.list_namespaced_pod(self.namespace).items
            for pod in pods:
                self.finish(pod.metadata.name, pod.metadata.uid)


@contextlib.contextmanager
def recorded(api_client: Any, namespace: str, *, slim: bool = False) -> Iterator[Recorder]:
    recorder = Recorder(api_client, namespace, slim=slim)
    recorder.start()
    try:
        yield recorder
    finally:
        recorder.stop()
