"""Resolution: from (namespace, sandbox name, port) to the addresses of that sandbox's pod.

Called by ``proxy`` for each request through ``Resolver.resolve``. Two sources sit behind one
small interface (``Source.lookup``): ``KubernetesSource``, a cache of
``agents.x-k8s.io/v1alpha1`` Sandboxes kept by a list+watch in a background thread (a request
costs no API call), and ``StaticSource``, a YAML/JSON file for local use and tests.

What it must not do: connect to anything (``proxy`` does, only to a ``Target`` from here),
take an address or host from a caller, or hand out an address the ``AddressPolicy`` refuses.
A target is only ever a Sandbox's own pod address (``status.podIPs``, or the A records of its
own headless Service ``status.serviceFQDN`` when no pod IP is published yet), on a port that
the Sandbox's pod template declares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from sandbox_router.addresses import AddressPolicy, AddressRefused, parse_address
from sandbox_router.headers import Route, is_dns_label

log = logging.getLogger(__name__)

GROUP = "agents.x-k8s.io"
VERSION = "v1alpha1"
PLURAL = "sandboxes"


class ResolveError(Exception):
    """Base of every refusal; `status` is the HTTP status the router answers."""

    status = 502


class UnknownSandbox(ResolveError):
    """No Sandbox of that name in that namespace (as far as the source knows)."""

    status = 404


class UndeclaredPort(ResolveError):
    """The Sandbox exists but its pod template declares no such TCP containerPort."""

    status = 404


class NoAddress(ResolveError):
    """The Sandbox exists but publishes no usable pod address (yet)."""

    status = 502


@dataclass(frozen=True)
class SandboxRecord:
    """What the router needs to know about one Sandbox, taken from the object itself."""

    namespace: str
    name: str
    addresses: tuple[str, ...]
    ports: frozenset[int]
    service_fqdn: str = ""


@dataclass(frozen=True)
class Target:
    """Where a request goes: policy-checked addresses (tried in order) and one port."""

    addresses: tuple[str, ...]
    port: int
    record: SandboxRecord


class Source(Protocol):
    """A place that knows which Sandboxes exist. Lookups are synchronous and cheap."""

    allow_loopback: bool

    def __len__(self) -> int: ...

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None: ...

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def record_from_sandbox(obj: Mapping[str, Any]) -> SandboxRecord | None:
    """A SandboxRecord from a Sandbox object (dict), or None if it lacks a usable name."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    status = obj.get("status") or {}
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
    fqdn = status.get("serviceFQDN")
    return SandboxRecord(namespace=namespace, name=name, addresses=tuple(addresses),
                         ports=frozenset(ports), service_fqdn=fqdn if isinstance(fqdn, str) else "")


class SandboxCache:
    """Sandboxes by (namespace, name), fed by list results and watch events (plain dicts).

    Written by one watch thread per namespace, read by the event loop: every change is a
    single dict assignment or pop, which the GIL makes atomic, so readers need no lock.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], SandboxRecord] = {}
        self.resource_versions: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, namespace: str, name: str) -> SandboxRecord | None:
        return self._records.get((namespace, name))

    def replace(self, items: Iterable[Mapping[str, Any]], *, namespace: str | None = None) -> None:
        """Replace what is known (in `namespace`, or everywhere) by a fresh list result."""
        fresh = {}
        for obj in items:
            record = record_from_sandbox(obj)
            if record is not None and (namespace is None or record.namespace == namespace):
                fresh[(record.namespace, record.name)] = record
        if namespace is None:
            self._records = fresh
            return
        for key in [k for k in self._records if k[0] == namespace and k not in fresh]:
            self._records.pop(key, None)
        self._records.update(fresh)

    def apply(self, event: Mapping[str, Any]) -> str | None:
        """Apply one watch event; return its resourceVersion (None for events we skip)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            return None
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return None
        record = record_from_sandbox(obj)
        if record is None:
            return version
        key = (record.namespace, record.name)
        if kind == "DELETED":
            self._records.pop(key, None)
        else:
            self._records[key] = record
        return version


class StaticSource:
    """Sandboxes from a mapping: ``{"sandboxes": {"ns/name": {"addresses": [...], "ports":
    [...]}}, "allow_loopback": false}``. For one machine and tests; a bare "name" key means
    namespace "default". Loopback addresses pass the policy only with allow_loopback: true.
    """

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
        return SandboxRecord(namespace=namespace, name=name, addresses=tuple(addresses),
                             ports=frozenset(checked))

    @classmethod
    def from_file(cls, path: str | Path) -> StaticSource:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls(data or {})

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None:
        return self._records.get((namespace, name))

    @property
    def ready(self) -> bool:
        return True

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class KubernetesSource:
    """Sandboxes from the API server: list, then watch, in a daemon thread per namespace.

    `api_client` lets a test hand in a client for its own API server; otherwise the in-cluster
    service account is used, then the kubeconfig. The router needs get/list/watch on
    sandboxes.agents.x-k8s.io and nothing else.
    """

    allow_loopback = False

    def __init__(self, *, namespaces: Iterable[str] = (), api_client: Any = None,
                 watch_timeout: int = 300, backoff: float = 1.0,
                 allow_loopback: bool = False) -> None:
        self.namespaces = tuple(namespaces)
        self.allow_loopback = allow_loopback
        self.cache = SandboxCache()
        self._api_client = api_client
        self._watch_timeout = watch_timeout
        self._backoff = backoff
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

    def start(self) -> None:
        from kubernetes import client, config  # the static source needs no kubernetes client

        if self._api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api_client = client.ApiClient()
        api = client.CustomObjectsApi(self._api_client)
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

    def _run(self, api: Any, namespace: str | None) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

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
                self.cache.replace(listing.get("items") or (), namespace=namespace)
                version = (listing.get("metadata") or {}).get("resourceVersion")
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
                            got = self.cache.apply({"type": event.get("type"),
                                                    "object": event.get("raw_object")})
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
    """Source + policy: the only way ``proxy`` gets an address to connect to."""

    def __init__(self, source: Source, policy: AddressPolicy, *,
                 cluster_domain: str = "cluster.local") -> None:
        self.source = source
        self.policy = policy
        self.cluster_domain = cluster_domain

    async def resolve(self, route: Route) -> Target:
        record = self.source.lookup(route.namespace, route.name)
        if record is None:
            raise UnknownSandbox(f"no sandbox {route.namespace}/{route.name}")
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
