"""What the router knows of one Sandbox, and the watch cache that holds those records.

``record_from_sandbox`` turns a Sandbox object (a dict, as the API server or a watch event
gives it) into a ``SandboxRecord``: its uid, pod addresses, declared ports, and why it must
not be dialled (not Ready, being deleted). ``SandboxCache`` keeps records by (namespace,
name), fed by list results and watch events, plus records read directly from the API server
while they are newer than the watch. Used by ``sources`` and ``resolve``. Pure data: no
sockets, no Kubernetes client, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox_common.contract import POD_NAME_ANNOTATION, READY

# Fetched records kept beside the watch cache while they are newer than it (a bound, not a
# working size: an entry lives only until the watch catches up).
MAX_FETCHED = 4096


@dataclass(frozen=True)
class SandboxRecord:
    """What the router needs to know about one Sandbox, taken from the object itself."""

    namespace: str
    name: str
    addresses: tuple[str, ...]
    ports: frozenset[int]
    service_fqdn: str = ""
    uid: str = ""  # metadata.uid ("" in a static file that names none)
    pod_name: str = ""  # status.podName, else the pod-name annotation
    resource_version: str = ""
    # Why the router must not dial it ("" when it may): not Ready, or being deleted.
    unservable: str = ""
    fetched: bool = False  # read directly from the API server, not from the watch


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def unservable_reason(obj: Mapping[str, Any]) -> str:
    """Why a Sandbox object must not be dialled ("" when it may): it is being deleted, or its
    Ready condition is missing or not True (the hooks report PodLost, PodNotReady, ...
    there, and never Ready on a pod that is terminating)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "is being deleted"
    status = obj.get("status") or {}
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, Mapping) and condition.get("type") == READY:
            if condition.get("status") == "True":
                return ""
            reason = _text(condition.get("reason")) or "no reason"
            message = _text(condition.get("message"))[:200]
            return f"is not ready ({reason}: {message})" if message else \
                f"is not ready ({reason})"
    return "reports no Ready condition yet"


def record_from_sandbox(obj: Mapping[str, Any], *,
                        fetched: bool = False) -> SandboxRecord | None:
    """A SandboxRecord from a Sandbox object (dict), or None if it lacks a usable name."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        status = {}
    addresses: list[str] = []
    for entry in status.get("podIPs") or ():
        # The Pod API spells them [{"ip": ...}]; accept plain strings as well.
        ip = entry.get("ip") if isinstance(entry, Mapping) else entry
        if isinstance(ip, str) and ip and ip not in addresses:
            addresses.append(ip)
    ports: set[int] = set()
    spec = ((obj.get("spec") or {}).get("podTemplate") or {}).get("spec") or {}
    for container in spec.get("containers") or ():
        if not isinstance(container, Mapping):
            continue
        for port in container.get("ports") or ():
            if not isinstance(port, Mapping):
                continue
            number, protocol = port.get("containerPort"), port.get("protocol") or "TCP"
            if isinstance(number, int) and not isinstance(number, bool) and protocol == "TCP" \
                    and 0 < number < 65536:
                ports.add(number)
    annotations = meta.get("annotations") or {}
    pod_name = _text(status.get("podName")) or (
        _text(annotations.get(POD_NAME_ANNOTATION)) if isinstance(annotations, Mapping) else "")
    return SandboxRecord(namespace=namespace, name=name, addresses=tuple(addresses),
                         ports=frozenset(ports), service_fqdn=_text(status.get("serviceFQDN")),
                         uid=_text(meta.get("uid")), pod_name=pod_name,
                         resource_version=_text(meta.get("resourceVersion")),
                         unservable=unservable_reason(obj), fetched=fetched)


def _revision(version: str | None) -> int | None:
    """A resourceVersion as a number, when it is one (etcd's revision, as every API server
    backed by etcd writes it); None otherwise, and then nothing is ordered by it."""
    if version and version.isascii() and version.isdigit() and len(version) < 20:
        return int(version)
    return None


class SandboxCache:
    """Sandboxes by (namespace, name), fed by list results and watch events (plain dicts),
    plus records read directly from the API server while they are newer than the watch.

    Written by one watch thread per namespace, read by the event loop: every change is a
    single dict assignment or pop, which the GIL makes atomic, so readers need no lock.
    The watch's position (the resourceVersion of the last list, event or bookmark applied) is
    kept per watched scope: a fetched record whose resourceVersion is past it is newer than
    anything the watch has shown, and is served in its place until the watch passes it.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], SandboxRecord] = {}
        self._fetched: dict[tuple[str, str], SandboxRecord] = {}
        # Watch position per scope: a namespace, or None for a watch of all namespaces.
        self.positions: dict[str | None, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def position(self, namespace: str) -> int | None:
        found = [p for p in (self.positions.get(namespace), self.positions.get(None))
                 if p is not None]
        return max(found) if found else None

    def get(self, namespace: str, name: str) -> SandboxRecord | None:
        key = (namespace, name)
        fetched = self._fetched.get(key)
        if fetched is not None:
            if self._ahead(fetched):
                return fetched
            self._fetched.pop(key, None)  # the watch has caught up with it
        return self._records.get(key)

    def _ahead(self, record: SandboxRecord) -> bool:
        revision, position = _revision(record.resource_version), self.position(record.namespace)
        return revision is not None and position is not None and revision > position

    def offer(self, record: SandboxRecord) -> None:
        """Keep a record read from the API server if it is newer than the watch's view."""
        if not self._ahead(record):
            return
        key = (record.namespace, record.name)
        self._fetched.pop(key, None)
        self._fetched[key] = record
        while len(self._fetched) > MAX_FETCHED:
            self._fetched.pop(next(iter(self._fetched)), None)

    def _advance(self, scope: str | None, version: str | None) -> None:
        revision = _revision(version)
        if revision is not None:
            self.positions[scope] = max(revision, self.positions.get(scope, revision))

    def replace(self, items: Iterable[Mapping[str, Any]], *, namespace: str | None = None,
                version: str | None = None) -> None:
        """Replace what is known (in `namespace`, or everywhere) by a fresh list result taken
        at resourceVersion `version`."""
        fresh = {}
        for obj in items:
            record = record_from_sandbox(obj)
            if record is not None and (namespace is None or record.namespace == namespace):
                fresh[(record.namespace, record.name)] = record
        if namespace is None:
            self._records = fresh
        else:
            for key in [k for k in self._records if k[0] == namespace and k not in fresh]:
                self._records.pop(key, None)
            self._records.update(fresh)
        self._advance(namespace, version)

    def apply(self, event: Mapping[str, Any], *, scope: str | None = None) -> str | None:
        """Apply one watch event of the watch over `scope`; return its resourceVersion (None
        for events we skip)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            return None
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            self._advance(scope, version)
            return version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return None
        record = record_from_sandbox(obj)
        if record is not None:
            key = (record.namespace, record.name)
            if kind == "DELETED":
                self._records.pop(key, None)
            else:
                self._records[key] = record
        # After the record: a reader never sees the new position with the old record.
        self._advance(scope, version)
        return version


