"""The kubelet stand-in: `Kubelet` plays the kubelet for one namespace (there is no node here).

In "runtime" mode every pod gets its own loopback address and a real `sandbox-runtime` on it,
turns Ready only when that answers, and on deletion stays Terminating for its grace period
with the runtime still serving, as a tenant would see it on a node; "instant" mode only
patches status, for speed. Used by the Metacontroller tier (tests/metacontroller) and by
bench_claims, on the loop testbed/metacontroller.py starts; `running_kubelet` runs one for
a block and fails the caller if it hit an error it could not explain.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from testbed.support import script, stop_process

if TYPE_CHECKING:
    from testbed.metacontroller import MetacontrollerStack


def running_status(ip: str, *, ready: bool) -> dict[str, Any]:
    """A pod status as a kubelet reports a started pod at ip, Ready or not yet."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flag = "True" if ready else "False"
    conditions = [{"type": t, "status": s, "lastTransitionTime": now} for t, s in (
        ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag),
        ("Ready", flag))]
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "startTime": now, "conditions": conditions}


NODE_NAME = "kubelet-stand-in"
RUNTIME_PORT = 8888  # the runtime image's port, when a pod's container names none
READY_TIMEOUT = 60.0


class LoopbackAddresses:
    """Distinct loopback addresses for pods, never handed out twice in this process.

    All of 127.0.0.0/8 reaches the loopback interface on Linux. The second octet is chosen at
    random per process, so two test runs on one machine (other checkouts, CI beside a
    developer) rarely meet; an address whose port is taken is skipped anyway.
    """

    def __init__(self) -> None:
        self.second = random.SystemRandom().randrange(16, 250)
        self.numbers = itertools.count(2)
        self.lock = threading.Lock()

    def take(self, port: int | None = None) -> str:
        with self.lock:
            for number in self.numbers:
                third, fourth = divmod(number, 254)
                address = f"127.{self.second}.{third % 256}.{fourth + 1}"
                if port is None or _bindable(address, port):
                    return address
        raise AssertionError("unreachable: itertools.count never ends")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


ADDRESSES = LoopbackAddresses()


@dataclass
class PodRun:
    """What the stand-in runs for one pod (by uid)."""

    name: str
    uid: str
    address: str
    port: int
    workspace: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    terminating: bool = False


class Kubelet(threading.Thread):
    """Plays the kubelet for one namespace; start() it, stop() it.

    mode="runtime" (the default): each new pod is bound to the node `kubelet-stand-in` (as the
    scheduler would; a bound pod's deletion is graceful and waits for the kubelet), gets its own
    loopback address and a real `sandbox-runtime --host <address> --port <containerPort>` on it;
    it is Running (not Ready) once the process starts and Ready once the runtime answers GET /.
    A deleted pod stays Terminating, its runtime still serving, for its grace period
    (deletionGracePeriodSeconds, at most `max_grace_seconds`); then the runtime is stopped and
    the pod removed with a zero-grace delete, as the kubelet confirms a deletion.
    The runtime's workspace is the host directory of the pod's first PersistentVolumeClaim
    volume (one directory per claim, kept across pods: data survives a pause and resume), else
    a directory of the pod's own, removed with it.

    mode="instant": no process and no binding; each new pod turns Running and Ready within
    milliseconds at its own address (or at `ip` for every pod, when given). For benchmarks.
    """

    def __init__(self, api_client: Any, namespace: str, ip: str | None = None, *,
                 mode: str = "runtime", state_dir: Path | None = None,
                 max_grace_seconds: float | None = None) -> None:
        super().__init__(daemon=True, name=f"kubelet-{namespace}")
        from kubernetes import client, watch

        if mode not in ("runtime", "instant"):
            raise ValueError(f"mode must be 'runtime' or 'instant', not {mode!r}")
        self.core = client.CoreV1Api(api_client)
        self.watch = watch.Watch()
        self.namespace, self.ip, self.mode = namespace, ip, mode
        self.max_grace_seconds = max_grace_seconds
        self.owns_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="kubelet-"))
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.pods: dict[str, PodRun] = {}  # by uid
        self.seen: set[str] = set()  # uids handled once (instant mode, or being started)
        self.gone: set[str] = set()  # uids whose DELETED event came (maybe before their start)
        self.addresses: dict[str, str] = {}  # pod name -> address it last had (for tests)
        self.errors: list[str] = []
        self.workers: list[threading.Thread] = []
        self.patch_pool: Any = None  # instant mode's status patches (a ThreadPoolExecutor)

    # ---- what tests read -------------------------------------------------------------------

    def address_of(self, pod_name: str) -> str:
        with self.lock:
            return self.addresses[pod_name]

    def volume_dir(self, claim_name: str) -> Path:
        """The host directory behind a PersistentVolumeClaim of this namespace."""
        return self.state_dir / "volumes" / claim_name

    def running(self) -> dict[str, PodRun]:
        """Pods whose runtime process is alive, by pod name."""
        with self.lock:
            return {r.name: r for r in self.pods.values()
                    if r.process is not None and r.process.poll() is None}

    # ---- the watch -------------------------------------------------------------------------

    def run(self) -> None:
        if self.mode == "runtime":
            self._ensure_node()
        instant = self.mode == "instant"
        while not self.stopping.is_set():
            try:
                # Instant mode reads raw JSON: a benchmark's thousands of pods would spend
                # milliseconds each in the client's model classes.
                for event in self.watch.stream(self.core.list_namespaced_pod, self.namespace,
                                               timeout_seconds=30, deserialize=not instant):
                    if instant:
                        self._handle_instant(event["type"], event["object"])
                    else:
                        self._handle(event["type"], event["object"])
            except Exception as exc:  # the watch ends when stopped or the API server restarts
                if self.stopping.is_set():
                    return
                self.errors.append(f"watch: {exc!r}")
                time.sleep(0.2)

    def _handle_instant(self, kind: str, pod: dict[str, Any]) -> None:
        """A new pod turns Running and Ready at once; the patch runs beside the watch, so a
        burst of new pods is not served one round trip at a time."""
        meta = pod.get("metadata") or {}
        uid, name = meta.get("uid"), meta.get("name")
        if kind not in ("ADDED", "MODIFIED") or meta.get("deletionTimestamp"):
            return
        if any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or []):
            return
        with self.lock:
            if uid in self.seen:
                return
            self.seen.add(uid)  # taken back if the patch fails, so the next event retries
            address = self.addresses.get(name) or self.ip or ADDRESSES.take()
            self.addresses[name] = address
        self._patches().submit(self._guarded, self._patch_instant, name, uid, address)

    def _patches(self) -> Any:
        from concurrent.futures import ThreadPoolExecutor

        with self.lock:
            if self.patch_pool is None:
                self.patch_pool = ThreadPoolExecutor(8, thread_name_prefix="kubelet-patch")
            return self.patch_pool

    def _patch_instant(self, name: str, uid: str, address: str) -> None:
        try:
            self._patch_status(name, running_status(address, ready=True))
        except Exception:
            with self.lock:
                self.seen.discard(uid)
            raise

    def _handle(self, kind: str, pod: Any) -> None:
        uid, name = pod.metadata.uid, pod.metadata.name
        if kind == "DELETED":
            with self.lock:
                self.gone.add(uid)
            self._spawn_worker(self._stop_runtime, uid)
            return
        with self.lock:
            run = self.pods.get(uid)
            new = uid not in self.seen
            self.seen.add(uid)
        if pod.metadata.deletion_timestamp:
            if run is not None and not run.terminating:
                run.terminating = True
                grace = float(pod.metadata.deletion_grace_period_seconds or 0)
                if self.max_grace_seconds is not None:
                    grace = min(grace, self.max_grace_seconds)
                self._spawn_worker(self._terminate, uid, name, grace)
            elif run is None and pod.spec.node_name == NODE_NAME:
                # Deleted before its runtime started: nothing to stop, confirm at once.
                self._spawn_worker(self._confirm_deletion, name, uid)
            return
        if new:
            self._spawn_worker(self._start_pod, pod)

    def _spawn_worker(self, target: Callable[..., None], *args: Any) -> None:
        worker = threading.Thread(target=self._guarded, args=(target, *args), daemon=True)
        with self.lock:
            self.workers = [w for w in self.workers if w.is_alive()] + [worker]
        worker.start()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:
            if not self.stopping.is_set():
                self.errors.append(f"{target.__name__}{args[:2]!r}: {exc!r}")

    # ---- one pod's life --------------------------------------------------------------------

    def _start_pod(self, pod: Any) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        name, uid = pod.metadata.name, pod.metadata.uid
        if not pod.spec.node_name:
            try:
                # Not deserialised: the client cannot read the Status a binding returns.
                self.core.create_namespaced_pod_binding(name, self.namespace, client.V1Binding(
                    metadata=client.V1ObjectMeta(name=name, uid=uid),
                    target=client.V1ObjectReference(kind="Node", name=NODE_NAME)),
                    _preload_content=False)
            except ApiException as exc:
                if exc.status == 404:  # deleted before it was scheduled
                    return
                raise
        port = container_port(pod)
        address = self.ip or ADDRESSES.take(port)
        claim = first_claim(pod)
        if claim is not None:
            workspace = self.volume_dir(claim)
        else:
            workspace = self.state_dir / "pods" / f"{name}-{uid}"
        workspace.mkdir(parents=True, exist_ok=True)
        run = PodRun(name=name, uid=uid, address=address, port=port, workspace=workspace,
                     log=self.state_dir / "logs" / f"{name}-{uid}.log")
        run.log.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.stopping.is_set() or uid in self.gone:
                return
            self.pods[uid] = run
            self.addresses[name] = address
            with run.log.open("ab") as log:
                run.process = subprocess.Popen(
                    [script("sandbox-runtime"), "--host", address, "--port", str(port),
                     "--base-dir", str(workspace)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=runtime_env())
        self._patch_status(name, running_status(address, ready=False), uid)
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"http://{address}:{port}/"
        while time.monotonic() < deadline and not self.stopping.is_set() and not run.terminating:
            if run.process.poll() is not None:
                raise RuntimeError(f"runtime of pod {name} exited with {run.process.returncode}"
                                   f" (log {run.log})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=1).status_code == 200:
                    self._patch_status(name, running_status(address, ready=True), uid)
                    return
            time.sleep(0.05)

    def _terminate(self, uid: str, name: str, grace: float) -> None:
        """The grace period, with the runtime serving; then stop it and confirm the deletion."""
        if self.stopping.wait(grace):
            return
        self._stop_runtime(uid, keep_record=True)
        self._confirm_deletion(name, uid)

    def _confirm_deletion(self, name: str, uid: str) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0,
                                            body=client.V1DeleteOptions(
                                                grace_period_seconds=0,
                                                preconditions=client.V1Preconditions(uid=uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a new pod of that name
                raise

    def _stop_runtime(self, uid: str, keep_record: bool = False) -> None:
        with self.lock:
            run = self.pods.get(uid) if keep_record else self.pods.pop(uid, None)
        if run is None:
            return
        if run.process is not None:
            stop_process(run.process, grace=5.0)
        if not keep_record and run.workspace.parent == self.state_dir / "pods":
            shutil.rmtree(run.workspace, ignore_errors=True)

    def _patch_status(self, name: str, status: dict[str, Any], uid: str | None = None) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status},
                                                  _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    def _ensure_node(self) -> None:
        """The Node the pods are bound to: what a registered kubelet would have created."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
                name=NODE_NAME, labels={"kubernetes.io/hostname": NODE_NAME})))
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _release_node(self) -> None:
        """Force-delete the namespace's pods still bound to the node, as when a node is removed:
        without a kubelet a graceful deletion (a namespace's, say) would never complete."""
        from kubernetes.client.rest import ApiException

        with contextlib.suppress(ApiException):
            pods = self.core.list_namespaced_pod(self.namespace,
                                                 field_selector=f"spec.nodeName={NODE_NAME}")
            for pod in pods.items:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(pod.metadata.name, self.namespace,
                                                    grace_period_seconds=0)

    def stop(self) -> None:
        """Stop watching, stop every runtime at once, remove what this stand-in made."""
        self.stopping.set()
        self.watch.stop()
        self.join(10)
        if self.patch_pool is not None:
            self.patch_pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            workers = list(self.workers)
            runs = list(self.pods.values())
            self.pods.clear()
        for run in runs:  # all at once, then wait for each
            if run.process is not None and run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGTERM)
        for run in runs:
            if run.process is not None:
                stop_process(run.process, grace=5.0)
        for worker in workers:
            worker.join(10)
        if self.mode == "runtime":
            self._release_node()
        if self.owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def runtime_env() -> dict[str, str]:
    """The runtime's environment: one worker, quiet, and bytecode as in the image (its `pip
    install` compiles every module; a checkout run with PYTHONDONTWRITEBYTECODE would compile
    the runtime's own modules again at every pod start, which no pod on a node does)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "SANDBOX_RUNTIME_WORKERS": "1", "SANDBOX_RUNTIME_LOG_LEVEL": "WARNING"}


def container_port(pod: Any) -> int:
    """The first TCP port the pod's first container declares, else the runtime's 8888."""
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if (port.protocol or "TCP") == "TCP":
                return int(port.container_port)
        break
    return RUNTIME_PORT


def first_claim(pod: Any) -> str | None:
    """The claim of the PVC volume the first container mounts, else of the pod's first one."""
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes or []
              if v.persistent_volume_claim is not None}
    if not claims:
        return None
    containers = pod.spec.containers or []
    for mount in (containers[0].volume_mounts or []) if containers else []:
        if mount.name in claims:
            return str(claims[mount.name])
    first = next(v for v in pod.spec.volumes if v.persistent_volume_claim is not None)
    return str(first.persistent_volume_claim.claim_name)


@contextlib.contextmanager
def running_kubelet(stack: MetacontrollerStack, namespace: str, state_dir: Path,
                    **options: Any) -> Iterator[Kubelet]:
    """The kubelet stand-in (real runtimes on per-pod loopback addresses) for the namespace,
    until the block ends; `options` go to Kubelet. Then the test fails if the stand-in hit an
    error it could not explain (a runtime that never answered, a status patch refused)."""
    api = stack.plane.api_client()
    player = Kubelet(api, namespace, state_dir=state_dir, **options)
    player.start()
    try:
        yield player
    finally:
        player.stop()
        api.close()
    assert not player.errors, player.errors
