"""Resolution: from (namespace, sandbox name, port[, uid]) to the addresses of that sandbox's pod.

Called by ``proxy`` for each request through ``Resolver.resolve``. Two sources sit behind one
small interface (``Source.lookup``): ``KubernetesSource``, a cache of
``agents.x-k8s.io/v1alpha1`` Sandboxes kept by a list+watch in a background thread (a request
costs no API call), and ``StaticSource``, a YAML/JSON file for local use and tests.

A watch cache lags: after a Sandbox is deleted and made again under the same name, the cache
may still hold the old one, whose pod keeps serving while it terminates. So a record carries
the Sandbox's uid, and the Resolver forwards only to the uid the request means: the one its
``X-Sandbox-UID`` names, else the one a direct (consistent) read from the API server returned
after the client's connection first named the sandbox (``identity``; docs/router.md states the
guarantee). It refuses a Sandbox whose record says it is not Ready or is being deleted.

What it must not do: connect to anything (``proxy`` does, only to a ``Target`` from here),
take an address or host from a caller, or hand out an address the ``AddressPolicy`` refuses.
A target is only ever a Sandbox's own pod address (``status.podIPs``, or the A records of its
own headless Service ``status.serviceFQDN`` when no pod IP is published yet), on a port that
the Sandbox's pod template declares.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from sandbox_router.addresses import AddressPolicy, AddressRefused, parse_address
from sandbox_router.headers import Route, is_dns_label
from sandbox_router.identity import ConnectionMemory, Reads

log = logging.getLogger(__name__)

GROUP = "agents.x-k8s.io"
VERSION = "v1alpha1"
PLURAL = "sandboxes"
POD_NAME_ANNOTATION = "agents.x-k8s.io/pod-name"
# Seconds a client should wait before asking again after a 503 from here.
RETRY_AFTER_SECONDS = 1
# Fetched records kept beside the watch cache while they are newer than it (a bound, not a
# working size: an entry lives only until the watch catches up).
MAX_FETCHED = 4096
# A Sandbox a read found not Ready is read again for a request at most this often (seconds):
# the watch may lag behind its turning Ready, and clients retrying must not each cost a read.
NOT_READY_RECHECK_SECONDS = 0.25


class ResolveError(Exception):
    """Base of every refusal; `status` is the HTTP status the router answers, with a
    Retry-After header when `retry_after` is set."""

    status = 502
    retry_after: int | None = None


class UnknownSandbox(ResolveError):
    """No Sandbox of that name in that namespace (as far as the source knows)."""

    status = 404


class UndeclaredPort(ResolveError):
    """The Sandbox exists but its pod template declares no such TCP containerPort."""

    status = 404


class NoAddress(ResolveError):
    """The Sandbox exists but publishes no usable pod address (yet)."""

    status = 502


class SandboxReplaced(ResolveError):
    """X-Sandbox-UID names a Sandbox that no longer holds that name (gone, or the name now
    belongs to another uid), as a consistent read from the API server says. Final."""

    status = 409


class NotServable(ResolveError):
    """The Sandbox's record says it is not Ready, or it is being deleted: never dialled."""

    status = 503
    retry_after = RETRY_AFTER_SECONDS


class Unconfirmed(ResolveError):
    """The uid a request needs could not be read from the API server (unreachable, slow,
    refused): nothing is forwarded on a guess."""

    status = 503
    retry_after = RETRY_AFTER_SECONDS


class SourceUnavailable(Exception):
    """A source could not read a Sandbox from its authority; the message says why."""


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


@dataclass(frozen=True)
class Target:
    """Where a request goes: policy-checked addresses (tried in order) and one port."""

    addresses: tuple[str, ...]
    port: int
    record: SandboxRecord


class Source(Protocol):
    """A place that knows which Sandboxes exist. Lookups are synchronous and cheap.

    A `live` source's lookups come from a cache that may lag behind its authority, and
    `fetch` reads the authority itself (and refreshes the cache); a source that is not live
    is its own authority (`fetch` is `lookup`)."""

    allow_loopback: bool
    live: bool

    def __len__(self) -> int: ...

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None: ...

    async def fetch(self, namespace: str, name: str) -> SandboxRecord | None: ...

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


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
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
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


class StaticSource:
    """Sandboxes from a mapping: ``{"sandboxes": {"ns/name": {"addresses": [...], "ports":
    [...], "uid": "..."}}, "allow_loopback": false}``. For one machine and tests; a bare
    "name" key means namespace "default". Loopback addresses pass the policy only with
    allow_loopback: true. The file is its own authority (not `live`); an entry without a uid
    cannot match a request's X-Sandbox-UID.
    """

    live = False

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError("static sandboxes: expected a mapping at the top level")
        allow = data.get("allow_loopback", False)
        if not isinstance(allow, bool):
            raise ValueError("static sandboxes: allow_loopback must be true or false")
        self.allow_loopback = allow
        self._records: dict[tuple[str, str], SandboxRecord] = {}
        sandboxes = data.get("sandboxes") or {}
        if not isinstance(sandboxes, Mapping):
            raise ValueError("static sandboxes: 'sandboxes' must be a mapping")
        for key, value in sandboxes.items():
            record = self._record(str(key), value)
            self._records[(record.namespace, record.name)] = record

    @staticmethod
    def _record(key: str, value: Any) -> SandboxRecord:
        namespace, _, name = key.rpartition("/")
        namespace = namespace or "default"
        if not (is_dns_label(namespace) and is_dns_label(name)):
            raise ValueError(f"static sandboxes: {key!r} is not namespace/name")
        if not isinstance(value, Mapping):
            raise ValueError(f"static sandboxes: {key}: expected addresses and ports")
        addresses = value.get("addresses") or ()
        ports = value.get("ports") or ()
        if isinstance(addresses, str) or isinstance(ports, (str, int)):
            raise ValueError(f"static sandboxes: {key}: addresses and ports must be lists")
        for address in addresses:
            parse_address(address)  # canonical spelling only; the policy runs per request
        checked = []
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"static sandboxes: {key}: bad port {port!r}")
            checked.append(port)
        uid = value.get("uid", "")
        if not isinstance(uid, str):
            raise ValueError(f"static sandboxes: {key}: uid must be a string")
        return SandboxRecord(namespace=namespace, name=name, addresses=tuple(addresses),
                             ports=frozenset(checked), uid=uid)

    @classmethod
    def from_file(cls, path: str | Path) -> StaticSource:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls(data or {})

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None:
        return self._records.get((namespace, name))

    async def fetch(self, namespace: str, name: str) -> SandboxRecord | None:
        return self.lookup(namespace, name)

    @property
    def ready(self) -> bool:
        return True

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class KubernetesSource:
    """Sandboxes from the API server: list, then watch, in a daemon thread per namespace;
    `fetch` reads one Sandbox directly (a GET without resourceVersion: a consistent read).

    `api_client` lets a test hand in a client for its own API server; otherwise the in-cluster
    service account is used, then the kubeconfig. The router needs get/list/watch on
    sandboxes.agents.x-k8s.io and nothing else.
    """

    allow_loopback = False
    live = True

    def __init__(self, *, namespaces: Iterable[str] = (), api_client: Any = None,
                 watch_timeout: int = 300, backoff: float = 1.0,
                 allow_loopback: bool = False, api_timeout: float = 5.0,
                 api_concurrency: int = 8, hold_file: str = "") -> None:
        self.namespaces = tuple(namespaces)
        self.allow_loopback = allow_loopback
        self.cache = SandboxCache()
        self._api_client = api_client
        self._api: Any = None
        self._watch_timeout = watch_timeout
        self._backoff = backoff
        self._api_timeout = api_timeout
        self._reader = ThreadPoolExecutor(max_workers=api_concurrency,
                                          thread_name_prefix="sandbox-read")
        self._hold_file = hold_file
        self._held: queue.Queue[Callable[[], object]] = queue.Queue()
        self._stopping = threading.Event()
        self._synced: dict[str | None, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._watches: list[Any] = []

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def ready(self) -> bool:
        return bool(self._synced) and all(ev.is_set() for ev in self._synced.values())

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None:
        if self.namespaces and namespace not in self.namespaces:
            return None
        return self.cache.get(namespace, name)

    async def fetch(self, namespace: str, name: str) -> SandboxRecord | None:
        """The Sandbox as the API server has it now (None: there is none), also offered to
        the cache. Raises SourceUnavailable when the API server cannot say."""
        if self.namespaces and namespace not in self.namespaces:
            return None
        if self._api is None:
            raise SourceUnavailable("the Kubernetes source is not started")
        obj = await asyncio.get_running_loop().run_in_executor(
            self._reader, self._get, namespace, name)
        record = record_from_sandbox(obj, fetched=True) if obj is not None else None
        if record is not None:
            self.cache.offer(record)
        return record

    def _get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._api_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise SourceUnavailable(f"the API server answered {exc.status}") from None
        except Exception as exc:  # connection refused, timeout, TLS: all mean "cannot say"
            raise SourceUnavailable(f"the API server is unreachable ({type(exc).__name__})"
                                    ) from None
        return obj if isinstance(obj, Mapping) else None

    def start(self) -> None:
        from kubernetes import client, config  # the static source needs no kubernetes client

        if self._api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api_client = client.ApiClient()
        api = self._api = client.CustomObjectsApi(self._api_client)
        if self._hold_file:
            log.warning("watch events are held while %s exists (a testing option)",
                        self._hold_file)
            threading.Thread(target=self._release_held, daemon=True,
                             name="sandbox-watch-held").start()
        for namespace in self.namespaces or (None,):
            self._synced[namespace] = threading.Event()
            thread = threading.Thread(target=self._run, args=(api, namespace), daemon=True,
                                      name=f"sandbox-watch-{namespace or 'all'}")
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for w in list(self._watches):
            w.stop()
        self._reader.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, change: Callable[[], object]) -> None:
        """Apply a change to the cache now, or queue it while the hold file exists."""
        if self._hold_file:
            self._held.put(change)
        else:
            change()

    def _release_held(self) -> None:
        while not self._stopping.is_set():
            try:
                change = self._held.get(timeout=0.1)
            except queue.Empty:
                continue
            while os.path.exists(self._hold_file) and not self._stopping.wait(0.01):
                pass
            change()

    def _run(self, api: Any, namespace: str | None) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        cache = self.cache
        delay = self._backoff
        while not self._stopping.is_set():
            try:
                args: tuple[str, ...]
                if namespace is None:
                    listing = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                    func, args = api.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
                else:
                    listing = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                    func = api.list_namespaced_custom_object
                    args = (GROUP, VERSION, namespace, PLURAL)
                version = (listing.get("metadata") or {}).get("resourceVersion")
                items = listing.get("items") or ()
                self._deliver(functools.partial(cache.replace, items, namespace=namespace,
                                                version=version))
                self._synced[namespace].set()
                log.info("sandbox cache synced", extra={"namespace": namespace or "*",
                                                        "sandboxes": len(self.cache)})
                delay = self._backoff
                while not self._stopping.is_set():
                    w = watch.Watch()
                    self._watches.append(w)
                    try:
                        for event in w.stream(func, *args, resource_version=version,
                                              timeout_seconds=self._watch_timeout,
                                              allow_watch_bookmarks=True):
                            change = {"type": event.get("type"),
                                      "object": event.get("raw_object")}
                            obj = change["object"]
                            got = (obj.get("metadata") or {}).get("resourceVersion") \
                                if isinstance(obj, Mapping) and change["type"] != "ERROR" \
                                else None
                            self._deliver(functools.partial(cache.apply, change,
                                                            scope=namespace))
                            version = got or version
                    finally:
                        self._watches.remove(w)
            except ApiException as exc:
                if self._stopping.is_set():
                    return
                # 410 Gone: our resourceVersion is too old; relist at once.
                if exc.status != 410:
                    log.warning("sandbox watch failed", extra={"status": exc.status})
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 30.0)
            except Exception:
                if self._stopping.is_set():
                    return  # the connection was cut because we are stopping
                log.exception("sandbox watch failed")
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)


class Resolver:
    """Source + policy: the only way ``proxy`` gets an address to connect to.

    With a live source, a request is forwarded only to the Sandbox uid it means: the one its
    X-Sandbox-UID names, else the one a read begun after the request arrived returned (for
    every request when no `connection` memory is given, else once per connection and name,
    and again whenever the cache shows another uid). `on_read(reason, result)` is told of
    every direct read (metrics).
    """

    def __init__(self, source: Source, policy: AddressPolicy, *,
                 cluster_domain: str = "cluster.local",
                 on_read: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.policy = policy
        self.cluster_domain = cluster_domain
        self.reads: Reads[SandboxRecord | None] = Reads()
        self._on_read = on_read
        self._clock = clock
        # When a read last found each name not servable (see NOT_READY_RECHECK_SECONDS).
        self._not_ready_at: dict[tuple[str, str], float] = {}

    async def resolve(self, route: Route, *,
                      connection: ConnectionMemory | None = None) -> Target:
        arrived = self.reads.arrival()
        key = (route.namespace, route.name)
        record = self.source.lookup(*key)
        if self.source.live:
            record = await self._identify(route, key, record, arrived, connection)
        elif record is None:
            raise UnknownSandbox(f"no sandbox {route.namespace}/{route.name}")
        elif route.uid is not None and record.uid != route.uid:
            raise SandboxReplaced(f"sandbox {route.namespace}/{route.name} is not uid "
                                  f"{route.uid}")
        if record.unservable:
            raise NotServable(f"sandbox {route.namespace}/{route.name} {record.unservable}")
        if route.port not in record.ports:
            raise UndeclaredPort(
                f"sandbox {route.namespace}/{route.name} declares no port {route.port}")
        candidates = record.addresses or await self._service_addresses(record)
        allowed, refused = [], []
        for address in candidates:
            try:
                self.policy.check(address)
            except AddressRefused as exc:
                refused.append(str(exc))
            else:
                allowed.append(address)
        if refused:
            log.warning("sandbox address refused", extra={
                "namespace": record.namespace, "sandbox": record.name, "refused": refused})
        if not allowed:
            reason = "address refused by policy" if refused else "no pod address yet"
            raise NoAddress(f"sandbox {route.namespace}/{route.name}: {reason}")
        return Target(addresses=tuple(allowed), port=route.port, record=record)

    async def _identify(self, route: Route, key: tuple[str, str],
                        record: SandboxRecord | None, arrived: int,
                        connection: ConnectionMemory | None) -> SandboxRecord:
        """The record of the uid this request means, read from the API server when the
        cache cannot vouch for it; or the refusal."""
        expected = route.uid if route.uid is not None else (
            connection.get(key) if connection is not None else None)
        if record is not None and expected is not None and record.uid == expected:
            checked = self._not_ready_at.get(key)
            if not record.unservable or (
                    checked is not None and self._clock() - checked < NOT_READY_RECHECK_SECONDS):
                return record
            why = "not_ready"  # the watch may lag behind a Sandbox that turned Ready
        elif route.uid is not None:
            why = "uid"
        else:
            why = "connection" if connection is not None else "request"
        where = f"sandbox {route.namespace}/{route.name}"
        try:
            fresh = await self.reads.read(key, arrived, self._fetch)
        except SourceUnavailable as exc:
            self._count(why, "error")
            raise Unconfirmed(f"cannot confirm {where} with the API server: {exc}") from None
        self._count(why, "absent" if fresh is None else "found")
        self._not_ready_at.pop(key, None)
        if fresh is not None and fresh.unservable:
            self._not_ready_at[key] = self._clock()
            while len(self._not_ready_at) > MAX_FETCHED:
                self._not_ready_at.pop(next(iter(self._not_ready_at)), None)
        if route.uid is not None:
            if fresh is None:
                raise SandboxReplaced(f"{where} (uid {route.uid}) no longer exists")
            if fresh.uid != route.uid:
                raise SandboxReplaced(f"{where} is uid {fresh.uid} now, not {route.uid}")
        elif fresh is None:
            raise UnknownSandbox(f"no sandbox {route.namespace}/{route.name}")
        elif connection is not None:
            connection.bind(key, fresh.uid)
        return fresh

    async def _fetch(self, key: tuple[str, str]) -> SandboxRecord | None:
        return await self.source.fetch(*key)

    def _count(self, why: str, result: str) -> None:
        if self._on_read is not None:
            self._on_read(why, result)

    async def _service_addresses(self, record: SandboxRecord) -> list[str]:
        """A records of the sandbox's own headless Service, only under its own exact name."""
        expected = f"{record.name}.{record.namespace}.svc.{self.cluster_domain}"
        if record.service_fqdn.rstrip(".") != expected:
            return []
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                expected + ".", None, type=socket.SOCK_STREAM)
        except OSError:
            return []
        found: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in found:
                found.append(address)
        return found
