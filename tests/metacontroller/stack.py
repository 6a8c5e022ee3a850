"""The whole Metacontroller loop on loopback, as a context manager (tests and bench share it).

A control plane (tests/controlplane/kube.py), our hooks under gunicorn
(`sandbox-hooks --bind 127.0.0.1:<port>`), manifests/overlays/loopback applied with that port,
and the Metacontroller binary the caller names, all on 127.0.0.1, stopped process group by
process group when the block ends. Nothing here builds or fetches Metacontroller.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
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
# Metacontroller's own defaults (5 QPS, burst 10, 5 workers) would make every wait here a
# measure of its client throttle; the production manifests raise them the same way.
METACONTROLLER_FLAGS = (
    "--client-go-qps=500",
    "--client-go-burst=1000",
    "--workers=16",
    "--discovery-interval=5s",
    "--zap-log-level=4",
)


@dataclass
class MetacontrollerStack:
    """The running loop: control plane, hooks server, Metacontroller, and test helpers."""

    plane: kube.ControlPlane
    hooks_url: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

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

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).stdout.strip()
        return json.loads(out) if out else None

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
        """Play the kubelet: the pod is Running and Ready at ip (a loopback address)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": ip,
            "startTime": now,
            "conditions": conditions,
        }
        args = [
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-o",
            "json",
            "-p",
            json.dumps({"status": status}),
        ]
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

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            stop_process(self.processes[name], grace=10.0)
        self.processes.clear()
        self.plane.stop()


def _spawn(workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env},
            cwd=workdir,
        )


def loopback_registrations(plane: kube.ControlPlane, hooks_address: str) -> str:
    """The loopback overlay rendered with our hooks server's address."""
    rendered = plane.kubectl("kustomize", str(LOOPBACK_OVERLAY)).stdout
    return rendered.replace(OVERLAY_HOOKS_ADDRESS, hooks_address)


@contextlib.contextmanager
def running_stack(workdir: Path, binary: str) -> Iterator[MetacontrollerStack]:
    """Start the loop in workdir with the Metacontroller at `binary`; stop it afterwards."""
    plane = kube.start(workdir / "control-plane", crds=[*kube.crd_files(), METACONTROLLER_CRDS])
    hooks_port = free_port()
    stack = MetacontrollerStack(
        plane=plane, hooks_url=f"http://127.0.0.1:{hooks_port}", workdir=workdir
    )
    try:
        stack.processes["hooks"] = _spawn(
            workdir,
            "hooks",
            [script("sandbox-hooks"), "--bind", f"127.0.0.1:{hooks_port}", "--workers", "2"],
            {"SANDBOX_HOOKS_ACCESS_LOG": "-"},
        )
        wait_for_port(hooks_port, timeout=30, process=stack.processes["hooks"])
        plane.kubectl(
            "apply",
            "--server-side",
            "--field-manager=tests",
            "-f",
            "-",
            input=loopback_registrations(plane, f"127.0.0.1:{hooks_port}"),
        )
        health_port, metrics_port = free_port(), free_port()
        stack.processes["metacontroller"] = _spawn(
            workdir,
            "metacontroller",
            [
                binary,
                f"--health-probe-bind-address=127.0.0.1:{health_port}",
                f"--metrics-address=127.0.0.1:{metrics_port}",
                "--pprof-address=0",
                *METACONTROLLER_FLAGS,
            ],
            {"KUBECONFIG": str(plane.kubeconfig)},
        )
        deadline = time.monotonic() + 60
        while True:
            process = stack.processes["metacontroller"]
            if process.poll() is not None:
                raise RuntimeError(
                    f"metacontroller exited with {process.returncode}\n{stack.logs(60)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=1).ok:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"metacontroller not ready after 60s\n{stack.logs(60)}")
            time.sleep(0.2)
    except BaseException:
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


class Kubelet(threading.Thread):
    """Plays the kubelet for one namespace: every new pod turns Running and Ready at `ip`.

    A watch, so a pod is Ready within milliseconds of its creation; start() it, stop() it.
    """

    def __init__(self, api_client: Any, namespace: str, ip: str = "127.0.0.1") -> None:
        super().__init__(daemon=True)
        from kubernetes import client, watch

        self.core = client.CoreV1Api(api_client)
        self.watch = watch.Watch()
        self.namespace, self.ip = namespace, ip
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                for event in self.watch.stream(self.core.list_namespaced_pod, self.namespace,
                                               timeout_seconds=30):
                    pod = event["object"]
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                        continue
                    if any(c.type == "Ready" and c.status == "True"
                           for c in (pod.status.conditions or [])):
                        continue
                    self.mark_ready(pod.metadata.name)
            except Exception:  # the watch ends when stopped or the API server restarts
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

    def mark_ready(self, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running", "podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": self.ip,
            "startTime": now, "conditions": conditions}})

    def stop(self) -> None:
        self.stopping.set()
        self.watch.stop()
        self.join(10)
