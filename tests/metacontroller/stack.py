"""The whole Metacontroller loop on loopback, as a context manager (tests and bench share it).

A control plane (tests/controlplane/kube.py), our hooks under gunicorn
(`sandbox-hooks --bind 127.0.0.1:<port>`), manifests/overlays/loopback applied with that port,
and a real Metacontroller, all on 127.0.0.1, stopped process group by process group when the
block ends. `metacontroller_binary()` finds the binary: METACONTROLLER_BIN, else
`../shared/bin/metacontroller` beside the repository. Nothing here builds or fetches it.

`Kubelet` plays the kubelet for one namespace (there is no node here): in "runtime" mode every
pod gets its own loopback address and a real `sandbox-runtime` on it, turns Ready only when that
answers, and on deletion stays Terminating for its grace period with the runtime still serving,
as a tenant would see it on a node; "instant" mode only patches status, for speed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.controlplane import kube
from tests.support import REPO, free_port, script, stop_process, wait_for_port

LOOPBACK_OVERLAY = REPO / "manifests" / "overlays" / "loopback"
OVERLAY_HOOKS_ADDRESS = "127.0.0.1:9443"  # what the overlay names; replaced by the real port
METACONTROLLER_CRDS = REPO / "tests" / "fixtures" / "metacontroller-crds.yaml"
# Where the project's shared tools sit: beside the repository (the clone's parent), as on the
# developers' machines and in CI. See ../shared/bin/README.md.
SHARED_METACONTROLLER = REPO.parent / "shared" / "bin" / "metacontroller"
# Metacontroller's own defaults (5 QPS, burst 10, 5 workers) would make every wait here a
# measure of its client throttle; the production manifests raise them the same way.
METACONTROLLER_FLAGS = (
    "--client-go-qps=500",
    "--client-go-burst=1000",
    "--workers=16",
    "--discovery-interval=5s",
    "--zap-log-level=4",
)


def metacontroller_binary() -> tuple[str | None, str]:
    """(path, "") of the Metacontroller to run, or (None, why there is none).

    METACONTROLLER_BIN wins when set (an unusable value is reported, not silently replaced);
    otherwise the project's shared binary beside the repository.
    """
    named = os.environ.get("METACONTROLLER_BIN", "")
    if named:
        if os.access(named, os.X_OK) and Path(named).is_file():
            return named, ""
        return None, f"METACONTROLLER_BIN={named} is not an executable file"
    if os.access(SHARED_METACONTROLLER, os.X_OK):
        return str(SHARED_METACONTROLLER), ""
    return None, (
        f"no Metacontroller: METACONTROLLER_BIN is unset and {SHARED_METACONTROLLER} does not "
        "exist; build Metacontroller from its public source outside this repo and point "
        "METACONTROLLER_BIN at it (docs/testing.md)"
    )


@dataclass
class MetacontrollerStack:
    """The running loop: control plane, hooks server, Metacontroller, and test helpers."""

    plane: kube.ControlPlane
    hooks_url: str
    workdir: Path
    binary: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metacontroller_flags: tuple[str, ...] = METACONTROLLER_FLAGS
    hooks_workers: int = 2
    hooks_env: dict[str, str] = field(default_factory=dict)
    metrics_url: str = ""  # Metacontroller's /metrics, once started

    @property
    def hooks_port(self) -> int:
        return int(self.hooks_url.rsplit(":", 1)[1])

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, check=check, input=input, timeout=timeout)

    def apply(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create or update obj (server-side apply, as a user would) and return it."""
        args = ["apply", "--server-side", "--field-manager=tests", "-o", "json", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args, input=json.dumps(obj)).stdout)

    def patch(self, kind: str, name: str, patch: dict[str, Any], *, namespace: str) -> None:
        """A merge patch, as `kubectl patch --type=merge` (how a user edits a live object)."""
        self.kubectl("patch", kind, name, "-n", namespace, "--type=merge",
                     "-p", json.dumps(patch))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).stdout.strip()
        return json.loads(out) if out else None

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", kind, "-n", namespace, "-o", "json").stdout
        return list(json.loads(out)["items"])

    def wait_for(
        self,
        kind: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] | None,
        *,
        namespace: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll until the object exists and predicate(obj) holds; return it.

        On timeout the assertion carries the last object seen and the tails of the
        Metacontroller and hooks logs: the usual reasons a loop did not converge.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.get(kind, name, namespace)
            if last is not None and (predicate is None or predicate(last)):
                return last
            time.sleep(0.2)
        raise AssertionError(
            f"{kind}/{name} did not reach the expected state in {timeout:.0f}s; last seen:\n"
            f"{json.dumps(last, indent=1)[-3000:]}\n{self.logs()}"
        )

    def wait_gone(
        self, kind: str, name: str, *, namespace: str | None = None, timeout: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(kind, name, namespace) is None:
                return
            time.sleep(0.2)
        raise AssertionError(f"{kind}/{name} still exists after {timeout:.0f}s\n{self.logs()}")

    def make_pod_ready(
        self, name: str, ip: str = "127.0.0.1", *, namespace: str | None = None
    ) -> dict[str, Any]:
        """Play the kubelet by hand: the pod is Running and Ready at ip (a loopback address)."""
        args = ["patch", "pod", name, "--subresource=status", "--type=merge", "-o", "json",
                "-p", json.dumps({"status": running_status(ip, ready=True)})]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name in ("metacontroller", "hooks"):
            path = self.workdir / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} log (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- the loop's own processes, which a test may kill and restart ----------------------

    def start_hooks(self) -> None:
        """Our hooks under gunicorn on the stack's hooks port (the same port after a restart)."""
        self.processes["hooks"] = _spawn(
            self.workdir,
            "hooks",
            [script("sandbox-hooks"), "--bind", f"127.0.0.1:{self.hooks_port}",
             "--workers", str(self.hooks_workers)],
            {"SANDBOX_HOOKS_ACCESS_LOG": "-", **self.hooks_env},
        )
        wait_for_port(self.hooks_port, timeout=30, process=self.processes["hooks"])

    def start_metacontroller(self, timeout: float = 60.0) -> None:
        """Start Metacontroller against the control plane and wait for its /readyz."""
        health_port, metrics_port = free_port(), free_port()
        process = self.processes["metacontroller"] = _spawn(
            self.workdir,
            "metacontroller",
            [
                self.binary,
                f"--health-probe-bind-address=127.0.0.1:{health_port}",
                f"--metrics-address=127.0.0.1:{metrics_port}",
                "--pprof-address=0",
                *self.metacontroller_flags,
            ],
            {"KUBECONFIG": str(self.plane.kubeconfig)},
        )
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"metacontroller exited with {process.returncode}\n{self.logs(60)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=1).ok:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"metacontroller not ready after {timeout:.0f}s\n"
                                   f"{self.logs(60)}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL one of the loop's processes (its whole group): no clean shutdown."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def ensure_running(self) -> None:
        """Restart whichever of hooks and Metacontroller is not running (after a kill)."""
        if self.processes.get("hooks") is None or self.processes["hooks"].poll() is not None:
            self.start_hooks()
        process = self.processes.get("metacontroller")
        if process is None or process.poll() is not None:
            self.start_metacontroller()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            stop_process(self.processes[name], grace=10.0)
        self.processes.clear()
        self.plane.stop()


def running_status(ip: str, *, ready: bool) -> dict[str, Any]:
    """A pod status as a kubelet reports a started pod at ip, Ready or not yet."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flag = "True" if ready else "False"
    conditions = [{"type": t, "status": s, "lastTransitionTime": now} for t, s in (
        ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag),
        ("Ready", flag))]
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "startTime": now, "conditions": conditions}


def _spawn(workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env},
            cwd=workdir,
        )


def loopback_registrations(plane: kube.ControlPlane, hooks_address: str,
                           overlay: Path = LOOPBACK_OVERLAY) -> str:
    """The loopback overlay rendered with our hooks server's address."""
    rendered = plane.kubectl("kustomize", str(overlay)).stdout
    return rendered.replace(OVERLAY_HOOKS_ADDRESS, hooks_address)


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    binary: str,
    *,
    audit: bool = False,
    metacontroller_flags: tuple[str, ...] = METACONTROLLER_FLAGS,
    hooks_workers: int = 2,
    hooks_env: dict[str, str] | None = None,
    overlay: Path = LOOPBACK_OVERLAY,
) -> Iterator[MetacontrollerStack]:
    """Start the loop in workdir with the Metacontroller at `binary`; stop it afterwards.

    The benchmark varies the rest: an API server audit log of writes (kube.start), other
    Metacontroller flags (later flags win over earlier ones), more hook workers, the hooks'
    environment (bench/ab_claims.py runs another revision's hooks through PYTHONPATH) and the
    registrations (another revision's loopback overlay)."""
    plane = kube.start(workdir / "control-plane", crds=[*kube.crd_files(), METACONTROLLER_CRDS],
                       audit=audit)
    stack = MetacontrollerStack(
        plane=plane, hooks_url=f"http://127.0.0.1:{free_port()}", workdir=workdir,
        binary=binary, metacontroller_flags=metacontroller_flags, hooks_workers=hooks_workers,
        hooks_env=dict(hooks_env or {}),
    )
    try:
        stack.start_hooks()
        plane.kubectl(
            "apply",
            "--server-side",
            "--field-manager=tests",
            "--force-conflicts",  # another overlay's CRDs (bench/ab_claims.py) replace ours
            "-f",
            "-",
            input=loopback_registrations(plane, f"127.0.0.1:{stack.hooks_port}", overlay),
        )
        stack.start_metacontroller()
    except BaseException:
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


# --- the kubelet stand-in -------------------------------------------------------------------

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
                    env={**os.environ, "SANDBOX_RUNTIME_WORKERS": "1",
                         "SANDBOX_RUNTIME_LOG_LEVEL": "WARNING"})
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
