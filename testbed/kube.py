"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Used by the control-plane tier (tests/controlplane/conftest.py) and the Metacontroller tier
(tests/metacontroller/conftest.py) to start a throw-away cluster without a kubelet. Binaries:
kube-apiserver, kube-controller-manager and kubectl from `make k8s` (hack/build-k8s.sh, cached in
~/.cache/agent-sandbox/k8s/<version>/); etcd v3.6 from `make etcd` (hack/build-etcd.sh, cached in
~/.cache/agent-sandbox/etcd/<version>/), or $ETCD_BIN. An etcd found only on PATH (Debian's 3.4)
is a fallback that etcd_report() names: it lacks watch progress notifications, so a watch
opened without a resourceVersion fails after about 3 s, which no real cluster does.

Choices, so the cluster behaves like a real one while staying on 127.0.0.1 only:
- TLS everywhere with a throw-away CA made by openssl at start-up; the admin authenticates
  with a client certificate in group system:masters, the controller manager with its own
  certificate (system:kube-controller-manager) and per-controller service-account credentials.
- --authorization-mode=RBAC, as in a real cluster (the admin is system:masters, so tests are
  not limited by it; a test can still bind a restricted identity and see a 403).
- The API server's default admission chain (ServiceAccount, RuntimeClass, PodSecurity, ...), so
  objects our hooks emit meet the same admission checks as on a cluster.
- No endpoint reconciler: the `kubernetes` Service would need a non-loopback address.
- A RuntimeClass `gvisor` (handler runsc), as on a cluster with gVisor installed: the
  RuntimeClass admission plugin rejects pods naming a RuntimeClass that does not exist.
- On request (`start(..., audit=True)`, the claim benchmark), an audit log of every write
  (create, update, patch, delete) at Metadata level: who wrote what, the answer's code, and the
  API server's own timestamps; reads are not logged. `ControlPlane.audit_log` names the file.

It must not: listen on anything but 127.0.0.1, touch ~/.kube, or leave a process running
(each component runs in its own process group and stop() kills the groups).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from testbed.support import REPO, free_port, stop_process

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
K8S_CACHE = Path(os.environ.get("K8S_CACHE", Path.home() / ".cache" / "agent-sandbox" / "k8s"))
BIN_DIR = K8S_CACHE / K8S_VERSION
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
ETCD_CACHE = Path(os.environ.get("ETCD_CACHE",
                                 Path.home() / ".cache" / "agent-sandbox" / "etcd"))
BUILT_ETCD = ETCD_CACHE / ETCD_VERSION / "etcd"
CRD_DIR = REPO / "manifests" / "crds"
START_TIMEOUT = 90.0
# What a cluster with gVisor installed has (GKE Sandbox and the gVisor docs name it so).
GVISOR_RUNTIME_CLASS = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                        "metadata": {"name": "gvisor"}, "handler": "runsc"}


def etcd_path() -> str | None:
    """etcd: $ETCD_BIN, else the one `make etcd` built, else (a reported fallback) PATH's."""
    for candidate in (os.environ.get("ETCD_BIN"), str(BUILT_ETCD)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("etcd")


@functools.cache
def etcd_version(path: str) -> str:
    """What `etcd --version` says its version is ("3.6.16"), or "unknown"."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
        for line in out.splitlines():
            if line.startswith("etcd Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def etcd_report() -> str:
    """One line naming the etcd the control plane runs on, and whether it is the fallback."""
    path = etcd_path()
    if path is None:
        return "etcd: none found (run `make etcd`)"
    version = etcd_version(path)
    line = f"etcd {version} ({path})"
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if len(major_minor) < 2 or major_minor < (3, 5):
        line += (" -- FALLBACK: older than 3.5, no watch progress notifications; "
                 "run `make etcd` to build v3.6")
    return line


def kubectl_path() -> str | None:
    """The kubectl built by `make k8s` (matches the API server), else the one on PATH."""
    built = BIN_DIR / "kubectl"
    if os.access(built, os.X_OK):
        return str(built)
    return shutil.which("kubectl")


def missing_binaries() -> list[str]:
    """Names of the binaries this control plane needs and cannot find."""
    missing = [name for name in ("kube-apiserver", "kube-controller-manager")
               if not os.access(BIN_DIR / name, os.X_OK)]
    if etcd_path() is None:
        missing.append("etcd")
    if kubectl_path() is None:
        missing.append("kubectl")
    return missing


def crd_files(directory: Path = CRD_DIR) -> list[Path]:
    """The project's CRD manifests (files holding CustomResourceDefinitions), sorted."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("*.yaml") if path.is_file() and any(
        doc.get("kind") == "CustomResourceDefinition" for doc in load_documents(path)))


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a file."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


# --- certificates ---------------------------------------------------------------------------

def _openssl(args: Sequence[str], cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _openssl_config(path: Path, subject: dict[str, str], extensions: dict[str, str]) -> Path:
    """A minimal openssl config, so no system default extension sneaks into our certs."""
    lines = ["[req]", "distinguished_name = dn", "prompt = no", "[dn]"]
    lines += [f"{key} = {value}" for key, value in subject.items()]
    lines += ["[ext]"] + [f"{key} = {value}" for key, value in extensions.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_certificates(pki: Path) -> None:
    """A CA, the API server's serving cert, two client certs and the service-account key pair.

    EC P-256 keys: generating them takes milliseconds, RSA-2048 a noticeable fraction of start-up.
    """
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_cfg = _openssl_config(pki / "ca.cnf", {"CN": "agent-sandbox-test-ca"}, {
        "basicConstraints": "critical,CA:TRUE",
        "keyUsage": "critical,keyCertSign,cRLSign,digitalSignature",
    })
    _openssl(["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
              "-config", str(ca_cfg), "-extensions", "ext"], pki)
    leaves = {
        "apiserver": ({"CN": "kube-apiserver"}, {
            "keyUsage": "critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage": "serverAuth",
            "subjectAltName": "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
        }),
        "admin": ({"O": "system:masters", "CN": "agent-sandbox-test-admin"}, {
            "keyUsage": "critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage": "clientAuth",
        }),
        "controller-manager": ({"CN": "system:kube-controller-manager"}, {
            "keyUsage": "critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage": "clientAuth",
        }),
    }
    for name, (subject, extensions) in leaves.items():
        cfg = _openssl_config(pki / f"{name}.cnf", subject, extensions)
        _openssl(["req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-config", str(cfg)], pki)
        _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "3", "-out", f"{name}.crt",
                  "-extfile", str(cfg), "-extensions", "ext"], pki)
    _openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key"], pki)
    _openssl(["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"], pki)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> Path:
    """A kubeconfig with absolute paths to the CA and one client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "agent-sandbox-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "agent-sandbox-test", "context": {
            "cluster": "agent-sandbox-test", "user": user, "namespace": "default"}}],
        "current-context": "agent-sandbox-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- the control plane ----------------------------------------------------------------------

@dataclass
class ControlPlane:
    """A running loopback control plane: its kubeconfig, URL, kubectl and API clients."""

    workdir: Path
    kubeconfig: Path
    server: str
    pki: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    crds: list[str] = field(default_factory=list)
    startup_seconds: float = 0.0
    etcd_dir: Path | None = None
    audit_log: Path | None = None  # JSON lines, one per write request (start(audit=True))

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; text in, text out.

        With check=True a non-zero exit raises AssertionError carrying kubectl's stderr, so a
        failing test shows the API server's own message.
        """
        binary = kubectl_path()
        if binary is None:
            raise RuntimeError("no kubectl: run `make k8s`")
        argv = [binary, "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.workdir / "kubectl-cache"), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                timeout=timeout, cwd=REPO, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient for this cluster (close it when done)."""
        from kubernetes import config as kube_config

        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))

    def get(self, path: str, **params: Any) -> requests.Response:
        """A raw GET against the API server as the admin (for health and discovery checks)."""
        return requests.get(self.server + path, params=params, timeout=10, **self._admin_tls())

    def get_stream(self, path: str, timeout: float = 90.0) -> requests.Response:
        """A streaming GET as the admin (a watch); use the answer as a context manager."""
        return requests.get(self.server + path, stream=True, timeout=timeout,
                            **self._admin_tls())

    def _admin_tls(self) -> dict[str, Any]:
        return {"verify": str(self.pki / "ca.crt"),
                "cert": (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))}

    def install_crds(self, files: Iterable[Path]) -> list[str]:
        """Server-side apply CRD files and wait until each is Established; returns their names.

        Server-side apply: a CRD carrying a full PodSpec schema exceeds the annotation size
        limit of client-side apply.
        """
        names: list[str] = []
        for path in files:
            names += [doc["metadata"]["name"] for doc in load_documents(path)
                      if doc.get("kind") == "CustomResourceDefinition"]
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        if names:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{name}" for name in names])
        self.crds += [name for name in names if name not in self.crds]
        return names

    def log(self, component: str, lines: int = 40) -> str:
        """The last lines of a component's log, for failure messages."""
        path = self.workdir / f"{component}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop every component, newest first, each as a whole process group."""
        for name in reversed(list(self.processes)):
            stop_process(self.processes[name], grace=15.0)
        self.processes.clear()
        if self.etcd_dir is not None:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)


def _spawn(workdir: Path, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir)
    finally:
        log.close()


def _wait(what: str, ready: Callable[[], bool], plane: ControlPlane, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in plane.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while waiting for "
                                   f"{what}:\n{plane.log(name)}")
        with contextlib.suppress(requests.RequestException):
            if ready():
                return
        time.sleep(0.1)
    logs = "\n".join(f"--- {n}\n{plane.log(n)}" for n in plane.processes)
    raise TimeoutError(f"{what} not reached after {timeout:.0f}s\n{logs}")


# Writes only, at Metadata level (no bodies), one line when the answer is complete: cheap enough
# to leave on during a benchmark, and the one reliable count of what each client wrote.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete",
                                        "deletecollection"]},
        {"level": "None"},
    ],
}


def _audit_flags(workdir: Path) -> tuple[list[str], Path]:
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    log = workdir / "audit.log"
    return [
        "--audit-policy-file", str(policy), "--audit-log-path", str(log),
        "--audit-log-format", "json", "--audit-log-maxbackup", "0",
        "--audit-log-maxsize", "0",  # one file, never rotated, for the run's length
    ], log


def _fast_data_dir(workdir: Path) -> Path:
    """etcd's data dir on tmpfs when there is one: fsync there costs nothing."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="agent-sandbox-etcd-", dir=shm))
    return workdir / "etcd"


def start(workdir: Path, *, crds: Iterable[Path] = (), controller_manager: bool = True,
          timeout: float = START_TIMEOUT, audit: bool = False) -> ControlPlane:
    """Start etcd, kube-apiserver and (optionally) kube-controller-manager on loopback.

    Returns once /readyz answers ok, the given CRDs are Established (installed before the
    controller manager starts) and the `default` ServiceAccount exists (so Pods can be created).
    With audit=True the API server logs every write to `plane.audit_log` (AUDIT_POLICY).
    CRDs installed later become known to the garbage collector only at its next resync (30 s).
    On any failure everything started is stopped.
    """
    missing = missing_binaries()
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: run `make k8s` (and `make system`)")
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    plane = ControlPlane(workdir=workdir, kubeconfig=workdir / "kubeconfig", server=server,
                         pki=pki)
    plane.etcd_dir = etcd_dir = _fast_data_dir(workdir)
    audit_flags: list[str] = []
    if audit:
        audit_flags, plane.audit_log = _audit_flags(workdir)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        plane.processes["etcd"] = _spawn(workdir, "etcd", [
            str(etcd_path()), "--name", "default", "--data-dir", str(etcd_dir),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}", "--listen-metrics-urls", "",
        ])
        make_certificates(pki)
        write_kubeconfig(plane.kubeconfig, server, pki, "admin")
        _wait("etcd health", lambda: requests.get(f"{etcd_url}/health", timeout=1).ok,
              plane, timeout)
        plane.processes["kube-apiserver"] = _spawn(workdir, "kube-apiserver", [
            str(BIN_DIR / "kube-apiserver"),
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(api_port), "--cert-dir", str(workdir / "apiserver-certs"),
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--endpoint-reconciler-type", "none",
            "--profiling=false",
            *audit_flags,
        ])
        _wait("kube-apiserver /readyz", lambda: plane.get("/readyz").text == "ok", plane,
              timeout)
        plane.kubectl("apply", "--server-side", "--field-manager=agent-sandbox-test-cluster",
                      "-f", "-", input=json.dumps(GVISOR_RUNTIME_CLASS))
        # CRDs before the controller manager: its garbage collector discovers resource types
        # at start and then only every 30 s, and ignores owners of types it does not know yet.
        plane.install_crds(crds)
        if controller_manager:
            cm_config = write_kubeconfig(workdir / "controller-manager.kubeconfig", server, pki,
                                         "controller-manager")
            plane.processes["kube-controller-manager"] = _spawn(
                workdir, "kube-controller-manager", [
                    str(BIN_DIR / "kube-controller-manager"),
                    "--kubeconfig", str(cm_config),
                    "--authentication-kubeconfig", str(cm_config),
                    "--authorization-kubeconfig", str(cm_config),
                    "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
                    "--leader-elect=false",
                    "--use-service-account-credentials",
                    "--service-account-private-key-file", str(pki / "sa.key"),
                    "--root-ca-file", str(pki / "ca.crt"),
                    "--controllers",
                    "garbage-collector-controller,namespace-controller,"
                    "serviceaccount-controller,serviceaccount-token-controller,"
                    "root-ca-certificate-publisher-controller",
                    "--profiling=false",
                ])
            _wait("the default ServiceAccount (kube-controller-manager running)",
                  lambda: plane.get("/api/v1/namespaces/default/serviceaccounts/default").ok,
                  plane, timeout)
        plane.startup_seconds = time.monotonic() - began
        return plane
    except BaseException:
        plane.stop()
        raise

