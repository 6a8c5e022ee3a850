"""The whole Metacontroller loop on loopback, as a context manager (tests and bench share it).

A control plane (testbed/kube.py), our hooks under gunicorn
(`sandbox-hooks --bind 127.0.0.1:<port>`), manifests/overlays/loopback applied with that port,
and a real Metacontroller, all on 127.0.0.1, stopped process group by process group when the
block ends. `metacontroller_binary()` finds the binary: METACONTROLLER_BIN, else
`../shared/bin/metacontroller` beside the repository. Nothing here builds or fetches it.

The kubelet stand-in that makes its pods run is testbed/kubelet.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from testbed import kube
from testbed.kubelet import running_status
from testbed.support import REPO, free_port, script, stop_process, wait_for_port

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
# Metacontroller's Go runtime settings, as manifests/metacontroller/flags-patch.yaml ships them.
METACONTROLLER_ENV: dict[str, str] = {}


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
    metacontroller_env: dict[str, str] = field(default_factory=lambda: dict(METACONTROLLER_ENV))
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
            {**self.metacontroller_env, "KUBECONFIG": str(self.plane.kubeconfig)},
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
    metacontroller_env: dict[str, str] | None = None,
) -> Iterator[MetacontrollerStack]:
    """Start the loop in workdir with the Metacontroller at `binary`; stop it afterwards.

    The benchmark varies the rest: an API server audit log of writes (kube.start), other
    Metacontroller flags (later flags win over earlier ones) and environment (over
    METACONTROLLER_ENV), more hook workers, the hooks'
    environment (bench/ab_claims.py runs another revision's hooks through PYTHONPATH) and the
    registrations (another revision's loopback overlay)."""
    plane = kube.start(workdir / "control-plane", crds=[*kube.crd_files(), METACONTROLLER_CRDS],
                       audit=audit)
    stack = MetacontrollerStack(
        plane=plane, hooks_url=f"http://127.0.0.1:{free_port()}", workdir=workdir,
        binary=binary, metacontroller_flags=metacontroller_flags, hooks_workers=hooks_workers,
        hooks_env=dict(hooks_env or {}),
        metacontroller_env={**METACONTROLLER_ENV, **(metacontroller_env or {})},
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
