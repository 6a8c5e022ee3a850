"""Where the router learns which Sandboxes exist: the ``Source`` interface and its two kinds.

``KubernetesSource`` keeps a cache of ``agents.x-k8s.io/v1alpha1`` Sandboxes by a list+watch
in a background thread per namespace (a request costs no API call) and reads one Sandbox
directly when ``resolve`` needs the API server's own word. ``StaticSource`` is a YAML/JSON
file, for one machine and tests. Built by ``app.build_source``; read by ``resolve.Resolver``.

What it must not do: decide whether a request may reach a Sandbox (``resolve`` does), connect
to a Sandbox, or take an address from a caller. The router needs get/list/watch on
sandboxes.agents.x-k8s.io and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import yaml

from sandbox_common.contract import GROUP, VERSION
from sandbox_common.contract import SANDBOXES as PLURAL
from sandbox_router.addresses import parse_address
from sandbox_router.headers import is_dns_label
from sandbox_router.records import SandboxCache, SandboxRecord, record_from_sandbox

log = logging.getLogger(__name__)


class SourceUnavailable(Exception):
    """A source could not read a Sandbox from its authority; the message says why."""


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


