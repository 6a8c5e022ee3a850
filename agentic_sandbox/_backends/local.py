"""The local backend: each sandbox is a gVisor `runsc` sandbox on this machine, no cluster.

Called by SandboxClient (backend="local", or "auto" without a cluster). Each sandbox is
`runsc run` (in the foreground, our child) of an OCI bundle written here: the host's root
filesystem read-only, /root, /home, /run, /mnt, /media and our state folder hidden behind
empty read-only tmpfs (the Python that runs the runtime is bound back read-only), a private
writable workspace at /workspace (a fresh host folder), a private /tmp tmpfs,
`--network=none`, uid 65534 with no capabilities, the template's CPU and memory in a
cgroup. Its first process is the runtime (`sandbox-runtime --stdio`, through
sandbox_runtime/launch.py), speaking HTTP/1.1 over its stdin/stdout, which are one end of a
socketpair; the other end is this process's. So no socket listens anywhere: only this
process holds the channel (docs/client.md, "Why a socketpair"). When that first channel
ends, the runtime stays as the sandbox's init (it reaps orphans).

If that channel breaks (an abandoned stream, a client-side timeout), the runtime sees
end-of-file, kills what it was running and exits; the next request starts a fresh runtime in
the same sandbox with another `runsc exec` on a new socketpair, so the workspace and
background processes survive.

Every sandbox is `runsc delete --force`d on close and at interpreter exit (atexit), with its
workspace removed. A sandbox left by a crashed process is recognised by its owner record
(pid + process start time) under the state folder and removed on the next start. runsc
state lives under its own `--root`, so other runsc users are never touched.

This module must never run a command outside gVisor: if runsc is missing, we are not root,
or runsc cannot start a sandbox, it raises BackendUnavailableError and stops there.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
)
from agentic_sandbox._templates import LocalTemplate, load_template, template_dirs

__all__ = ["LocalBackend", "LocalSandbox", "clean_stale", "manager"]

log = logging.getLogger(__name__)

STATE_ENV: Final = "AGENTIC_SANDBOX_STATE_DIR"
RUNSC_ENV: Final = "AGENTIC_SANDBOX_RUNSC"
PLATFORM_ENV: Final = "AGENTIC_SANDBOX_RUNSC_PLATFORM"
WARM_POOL_ENV: Final = "AGENTIC_SANDBOX_WARM_POOL"
MEMORY_ENV: Final = "AGENTIC_SANDBOX_LOCAL_MEMORY"
DISK_ENV: Final = "AGENTIC_SANDBOX_LOCAL_DISK"
CPU_ENV: Final = "AGENTIC_SANDBOX_LOCAL_CPU"
ID_PREFIX: Final = "agentsbx"
WORKSPACE: Final = "/workspace"
BASE_URL: Final = "http://sandbox.local"
SANDBOX_UID: Final = 65534  # nobody: cannot read root-only host files such as /etc/shadow
DEFAULT_MEMORY_BYTES: Final = 2 * 2**30  # when a template sets no memory limit
DEFAULT_DISK_BYTES: Final = 2**30  # when a template sets no ephemeral-storage
MIN_DISK_BYTES: Final = 16 * 2**20  # the smallest ext4 worth making
DEFAULT_CPU_MILLIS: Final = 1000  # when a template sets no CPU limit (nor a larger request)
CPU_PERIOD_US: Final = 100_000
WORKSPACE_IMAGE: Final = "workspace.img"
PIDS_LIMIT: Final = 1024  # a fork bomb ends the sandbox, not the host (design section 7)
TMP_SIZE: Final = "256m"
MAX_WARM_POOL: Final = 8
REFILL_DELAY_S: Final = 0.5
RUNSC_TIMEOUT_S: Final = 30.0
HIDDEN_DIRS: Final = ("/root", "/home", "/run", "/mnt", "/media")
def _default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "agent-sandbox" / "local")


def _process_start(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/<pid>/stat), or None if it is gone.

    With the pid it identifies a process for good: a reused pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _runsc_binary() -> str:
    """Path of a usable runsc, or BackendUnavailableError saying what to do."""
    path = os.environ.get(RUNSC_ENV) or shutil.which("runsc")
    if not path or not os.access(path, os.X_OK):
        raise BackendUnavailableError(
            "the local backend needs gVisor's runsc, which is not installed: run "
            "`apt-get install runsc` (or `make system`), or use a cluster with "
            "backend='kubernetes' / AGENTIC_SANDBOX_BACKEND=kubernetes")
    if os.geteuid() != 0:
        raise BackendUnavailableError(
            "the local backend starts gVisor sandboxes with runsc, which needs root here: "
            "run as root (e.g. with sudo), or use backend='kubernetes'")
    if importlib.util.find_spec("sandbox_runtime") is None or \
            importlib.util.find_spec("flask") is None:
        raise BackendUnavailableError(
            "the local backend runs sandbox-runtime inside gVisor, and it is not installed "
            "in this Python: pip install 'agent-sandbox[runtime]'")
    return path


def _compile_runtime() -> None:
    """Write the runtime's bytecode where it is missing or stale (the sandbox cannot: the
    host is read-only inside; compiling there on every start costs ~100 ms under ptrace)."""
    spec = importlib.util.find_spec("sandbox_runtime")
    if spec is None or not spec.origin:
        return
    import compileall

    with contextlib.suppress(Exception):  # a read-only install was compiled when installed
        compileall.compile_dir(os.path.dirname(spec.origin), quiet=2)


def _runtime_paths() -> list[str]:
    """Where the runtime's imports live on this host: the folder holding sandbox_runtime,
    then this interpreter's site-packages (and the folders of the runtime's dependencies,
    wherever they are installed)."""
    import site

    paths: list[str] = []
    for module in ("sandbox_runtime", "flask", "werkzeug", "prometheus_client"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parent.parent))
        if module == "sandbox_runtime":
            paths += site.getsitepackages()
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _runtime_argv() -> list[str]:
    """sandbox_runtime/launch.py run by path with -I -S -B (its docstring says why), found
    without importing the runtime (_runsc_binary checked that it is installed)."""
    spec = importlib.util.find_spec("sandbox_runtime")
    assert spec is not None and spec.origin is not None
    launch = os.path.join(os.path.dirname(spec.origin), "launch.py")
    return [sys.executable, "-I", "-S", "-B", launch, os.pathsep.join(_runtime_paths()),
            WORKSPACE]


def _visible_paths() -> list[str]:
    """Host paths the runtime needs even when they sit in a hidden folder (the interpreter,
    the virtualenv, the runtime's source): bound back read-only inside the tmpfs."""
    spec = importlib.util.find_spec("sandbox_runtime")
    source = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
    candidates = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
                  Path(sys.executable).resolve().parent.parent}
    if source is not None:
        candidates.add(source)
    return sorted(str(p) for p in candidates)


def _hidden_dirs(state_dir: Path) -> list[str]:
    hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d)]
    state = str(state_dir.resolve())
    if not any(state == d or state.startswith(d + "/") for d in hidden):
        hidden.append(state)
    return hidden


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def oci_spec(template: LocalTemplate, workspace: Path, state_dir: Path, sandbox_id: str,
             *, cgroups: bool = True) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of one sandbox."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.update(dict(template.env))
    # The first process is the first runtime, speaking on runsc run's stdin/stdout (no
    # `runsc exec`, no second interpreter start); once its channel ends it stays as the
    # sandbox's init (launch.py). Later runtimes come in with `runsc exec`, so a broken
    # channel costs one runtime, never the sandbox.
    argv = _runtime_argv()
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", f"size={TMP_SIZE}", "mode=1777"]},
    ]
    hidden = _hidden_dirs(state_dir)
    for folder in hidden:
        mounts.append({"destination": folder, "type": "tmpfs", "source": "tmpfs",
                       "options": ["ro", "nosuid", "nodev", "size=1m", "mode=755"]})
    # The interpreter and the runtime's code may live under a folder the sandbox gets empty
    # (a hidden one, or /tmp, which is private): bind them back, read-only.
    covered = [*hidden, "/tmp"]
    for path in _visible_paths():
        if any(_under(path, folder) for folder in covered):
            mounts.append({"destination": path, "type": "bind", "source": path,
                           "options": ["rbind", "ro"]})
    mounts.append({"destination": WORKSPACE, "type": "bind", "source": str(workspace),
                   "options": ["rbind", "rw"]})
    no_caps: dict[str, list[str]] = {k: [] for k in
                                     ("bounding", "effective", "permitted", "inheritable",
                                      "ambient")}
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
    }
    if cgroups:
        memory = template.memory_limit_bytes or _default_memory()
        resources: dict[str, Any] = {"memory": {"limit": memory},
                                     "pids": {"limit": PIDS_LIMIT}}
        cpu: dict[str, Any] = {}
        if template.cpu_request_millis:
            cpu["shares"] = max(2, template.cpu_request_millis * 1024 // 1000)
        if template.cpu_limit_millis:
            cpu["period"] = CPU_PERIOD_US
            cpu["quota"] = template.cpu_limit_millis * CPU_PERIOD_US // 1000
        if cpu:
            resources["cpu"] = cpu
        linux["resources"] = resources
        linux["cgroupsPath"] = f"/agent-sandbox/{sandbox_id}"
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
                    "args": argv, "env": [f"{k}={v}" for k, v in env.items()],
                    "cwd": WORKSPACE, "capabilities": no_caps, "noNewPrivileges": True,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]},
        "root": {"path": "/", "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": linux,
    }


def exec_process(spec: dict[str, Any]) -> dict[str, Any]:
    """The process spec `runsc exec --process` starts the runtime with: the sandbox's user,
    environment, capabilities (none) and limits, running sandbox_runtime/launch.py."""
    return spec["process"] | {"args": _runtime_argv()}


def _default_memory() -> int:
    from agentic_sandbox._templates import parse_memory
    raw = os.environ.get(MEMORY_ENV)
    return parse_memory(raw) if raw else DEFAULT_MEMORY_BYTES


def cpu_limit_millis(template: LocalTemplate) -> int:
    """The sandbox's CPU bound (CFS quota): the template's limit (in the spec); else its
    request or the default (1 CPU, or $AGENTIC_SANDBOX_LOCAL_CPU), whichever is larger, set
    once the sandbox is ready (set_cpu_quota). A pod without a limit may use its node's
    idle CPU; a local sandbox must not take this whole machine."""
    if template.cpu_limit_millis:
        return template.cpu_limit_millis
    from agentic_sandbox._templates import parse_cpu
    raw = os.environ.get(CPU_ENV)
    default = parse_cpu(raw) if raw else DEFAULT_CPU_MILLIS
    return max(default, template.cpu_request_millis or 0)


def set_cpu_quota(sandbox_id: str, millis: int) -> bool:
    """Write a CFS quota into a running sandbox's cgroup (v1 or v2); False if there is none.

    For templates without a CPU limit: the default bound is set once the sandbox is ready,
    not in its spec, so the start-up burst (runsc's boot, the runtime's and its first
    keeper's interpreters, measured at 60-100 ms longer under a one-CPU quota) is not
    throttled; everything the sandbox's code runs afterwards is."""
    quota = millis * CPU_PERIOD_US // 1000
    v1 = Path("/sys/fs/cgroup/cpu/agent-sandbox") / sandbox_id
    v2 = Path("/sys/fs/cgroup/agent-sandbox") / sandbox_id / "cpu.max"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            (v1 / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (v1 / "cpu.cfs_quota_us").write_text(str(quota))
            return True
        if v2.exists():
            v2.write_text(f"{quota} {CPU_PERIOD_US}")
            return True
    except OSError as exc:
        log.warning("cannot set the CPU quota of sandbox %s: %s", sandbox_id, exc)
    return False


def workspace_bytes(template: LocalTemplate) -> int:
    """The workspace's size: the template's ephemeral-storage (limit, else request), else
    1 GiB (or $AGENTIC_SANDBOX_LOCAL_DISK); at least MIN_DISK_BYTES."""
    from agentic_sandbox._templates import parse_memory
    raw = os.environ.get(DISK_ENV)
    size = template.ephemeral_storage_bytes or (parse_memory(raw) if raw
                                                else DEFAULT_DISK_BYTES)
    return max(size, MIN_DISK_BYTES)


def _tool(name: str) -> str:
    """A system tool (mkfs.ext4, mount, umount), also from /sbin when PATH lacks it."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") \
        or name


def _quiet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUNSC_TIMEOUT_S, check=False)


def mount_workspace(workspace: Path, image: Path, size: int) -> str:
    """Give the (empty) workspace folder a filesystem of its own, `size` bytes: a sparse
    ext4 image on a loop device (disk-backed, like a pod's ephemeral storage), else a tmpfs
    of that size (memory-backed) where loop devices are missing. Writes past it fail with
    ENOSPC inside the sandbox; the host's disk gives at most `size`. Returns which."""
    with open(image, "wb") as f:
        f.truncate(size)
    made = _quiet([_tool("mkfs.ext4"), "-q", "-F", "-m", "0", "-O", "^has_journal",
                   "-E", f"root_owner={SANDBOX_UID}:{SANDBOX_UID}", str(image)])
    kind = "ext4 image"
    # discard: a file deleted inside gives its blocks back to the host at once.
    if made.returncode != 0 or _quiet([_tool("mount"), "-o",
                                        "loop,discard,nosuid,nodev,noatime",
                                        str(image), str(workspace)]).returncode != 0:
        image.unlink(missing_ok=True)
        kind = "tmpfs"
        done = _quiet([_tool("mount"), "-t", "tmpfs", "-o",
                       f"size={size},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID},"
                       "nosuid,nodev", "tmpfs", str(workspace)])
        if done.returncode != 0:
            raise BackendUnavailableError(
                "cannot give the sandbox's workspace a bounded filesystem (no loop device "
                f"for an ext4 image, no tmpfs mount): {done.stderr.strip()}")
    with contextlib.suppress(OSError):
        os.rmdir(workspace / "lost+found")
    os.chown(workspace, SANDBOX_UID, SANDBOX_UID)
    os.chmod(workspace, 0o700)
    return kind


def release_workspace(workspace: Path) -> None:
    """Unmount the workspace's filesystem (lazily if something still holds it), then
    remove the folder. Never removes files through a mount it could not detach."""
    if os.path.ismount(workspace) and \
            _quiet([_tool("umount"), str(workspace)]).returncode != 0:
        _quiet([_tool("umount"), "-l", str(workspace)])
    if os.path.ismount(workspace):
        log.warning("could not unmount the workspace %s", workspace)
        return
    remove_files(workspace)


# -- HTTP over a socketpair -----------------------------------------------------------------


class _ChannelConnection(HTTPConnection):
    """A urllib3 connection whose 'socket' comes from the sandbox, not from connect()."""

    def __init__(self, *args: Any, channel_factory: Callable[[], socket.socket],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_factory = channel_factory

    def _new_conn(self) -> socket.socket:
        try:
            return self._channel_factory()
        except SandboxError as exc:
            raise urllib3.exceptions.NewConnectionError(self, str(exc)) from exc


class _ChannelPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _ChannelConnection  # type: ignore[assignment]


class ChannelAdapter(HTTPAdapter):
    """A requests adapter that sends every request over a sandbox's stdio channel.

    One pooled connection; a second concurrent request gets its own channel (a second
    runtime via `runsc exec`) that is closed after use. No retries: replay is the client's
    decision alone.
    """

    def __init__(self, channel_factory: Callable[[], socket.socket]) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self._pool = _ChannelPool("sandbox.local", 80, maxsize=1, block=False, retries=False,
                                  channel_factory=channel_factory)

    def get_connection_with_tls_context(self, request: requests.PreparedRequest,
                                        verify: bool | str | None,
                                        proxies: Mapping[str, str] | None = None,
                                        cert: Any = None) -> urllib3.HTTPConnectionPool:
        return self._pool

    def get_connection(self, url: str | bytes,
                       proxies: Mapping[str, str] | None = None) -> urllib3.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


# -- one sandbox ------------------------------------------------------------------------------


class LocalSandbox:
    """One runsc sandbox with its workspace, runtime channel(s) and owner record."""

    def __init__(self, template: LocalTemplate, state_dir: Path, runsc: str,
                 platform: str) -> None:
        self.template = template
        self.id = f"{ID_PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
        self.state_dir = state_dir
        self.runsc = runsc
        self.platform = platform
        self.dir = state_dir / "sandboxes" / self.id
        self.workspace = state_dir / "workspaces" / self.id
        self.workspace_kind = ""  # "ext4 image" or "tmpfs", once mounted
        self.log_path = self.dir / "runtime.log"
        self._first_channel: socket.socket | None = None
        self._execs: list[subprocess.Popen[bytes]] = []
        self._run: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._destroyed = False
        self.adapter = ChannelAdapter(self._new_channel)

    def _runsc(self, *args: str) -> list[str]:
        return [self.runsc, "--root", str(self.state_dir / "runsc"), *args]

    def start(self, *, cgroups: bool = True) -> None:
        """Write the bundle and owner record, then start the sandbox with `runsc run`.

        `runsc run` stays in the foreground as our child: the sandbox process is then its
        child and is reaped at once when it dies, so removal takes milliseconds (a detached
        sandbox is reparented to init, and `runsc delete` waits a second or more for it).
        """
        self.dir.mkdir(parents=True, mode=0o700)
        (self.dir / "owner.json").write_text(json.dumps(
            {"pid": os.getpid(), "start": _process_start(os.getpid()),
             "workspace": str(self.workspace)}))
        self.workspace.mkdir(parents=True, mode=0o700)
        self.workspace_kind = mount_workspace(self.workspace, self.dir / WORKSPACE_IMAGE,
                                              workspace_bytes(self.template))
        spec = oci_spec(self.template, self.workspace, self.state_dir, self.id, cgroups=cgroups)
        (self.dir / "config.json").write_text(json.dumps(spec, indent=1))
        (self.dir / "process.json").write_text(json.dumps(exec_process(spec)))
        flags = [f"--platform={self.platform}", "--network=none"]
        if not cgroups:
            flags.append("--ignore-cgroups")
        # The first runtime is the sandbox's first process, on one end of a socketpair
        # given to `runsc run` as stdin and stdout. Requests wait in the socket buffer
        # until it reads them, so nothing polls for the container to be running.
        ours, theirs = socket.socketpair()
        try:
            with open(self.log_path, "ab") as logfile:
                self._run = subprocess.Popen(
                    self._runsc(*flags, "run", "--bundle", str(self.dir), self.id),
                    stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=logfile,
                    start_new_session=True)  # a Ctrl-C in the terminal must not kill it
        except OSError as exc:
            ours.close()
            raise BackendUnavailableError(f"cannot start runsc: {exc}") from exc
        finally:
            theirs.close()
        self._first_channel = ours
        # `runsc run` keeps its own copy of the channel's other end for the sandbox's life,
        # so a sandbox that ends (its first process crashed, runsc failed to start it) is
        # made visible here: when runsc run exits, our end is shut down, and whatever
        # waits on it sees end-of-file at once.
        threading.Thread(target=self._watch_run, args=(self._run, ours),
                         name=f"sandbox-watch-{self.id}", daemon=True).start()

    @staticmethod
    def _watch_run(run: subprocess.Popen[bytes], channel: socket.socket) -> None:
        run.wait()
        with contextlib.suppress(OSError):
            channel.shutdown(socket.SHUT_RDWR)

    def start_failed(self, grace: float = 2.0) -> bool:
        """Whether `runsc run` exits within `grace` seconds (the sandbox could not start or
        ended): called when the channel broke, which can be noticed a moment before the
        watcher has reaped runsc run."""
        if self._run is None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run.wait(grace)
        return self._run.returncode is not None

    def log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _new_channel(self) -> socket.socket:
        """The first call gets the sandbox's first process; later ones a fresh runtime."""
        with self._lock:
            if self._destroyed:
                raise SandboxConnectionError(f"sandbox {self.id} was removed")
            if self._first_channel is not None:
                channel, self._first_channel = self._first_channel, None
                return channel
            return self._exec_runtime()

    def _exec_runtime(self) -> socket.socket:
        """Start a runtime in the sandbox with `runsc exec`, speaking over a new socketpair.

        runsc exec stays our child for the runtime's life and exits with it, so the channel
        reaches end-of-file when the runtime ends.
        """
        ours, theirs = socket.socketpair()
        try:
            with open(self.log_path, "ab") as logfile:
                proc = subprocess.Popen(
                    self._runsc("exec", "--process", str(self.dir / "process.json"), self.id),
                    stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=logfile,
                    start_new_session=True)
        except OSError as exc:
            ours.close()
            raise SandboxConnectionError(f"cannot start a runtime in {self.id}: {exc}") \
                from exc
        finally:
            theirs.close()
        self._execs = [p for p in self._execs if p.poll() is None] + [proc]
        return ours

    def wait_ready(self, timeout: float, *, warm_up: bool = False) -> None:
        """Block until the runtime answers GET / (the request waits in the socket buffer);
        with `warm_up`, also until it has run one command (for warm-pool spares)."""
        session = requests.Session()
        session.mount(BASE_URL + "/", self.adapter)
        try:
            response = session.get(BASE_URL + "/", timeout=(timeout, timeout))
            if response.status_code != 200:
                raise SandboxConnectionError(f"runtime answered {response.status_code}")
            # The runtime's first command pays a one-time set-up (~10 ms under gVisor):
            # a spare pays it in advance; a cold start would only add a round trip.
            if warm_up:
                response = session.post(BASE_URL + "/execute", json={"command": "true"},
                                        timeout=(timeout, timeout))
                if response.status_code != 200:
                    raise SandboxConnectionError(
                        f"runtime answered {response.status_code} to its first command")
        except requests.Timeout as exc:
            raise SandboxTimeoutError(
                f"the runtime in sandbox {self.id} did not answer within {timeout:.0f} s; "
                f"log: {self.log_tail()}") from exc
        except requests.RequestException as exc:
            if self.start_failed():
                assert self._run is not None
                raise BackendUnavailableError(
                    f"runsc could not start a gVisor sandbox (exit {self._run.returncode}, "
                    f"platform {self.platform}): {self.log_tail()}") from exc
            raise SandboxConnectionError(
                f"the runtime in sandbox {self.id} did not start: {exc}; "
                f"log: {self.log_tail()}") from exc

    def destroy(self) -> None:
        """runsc delete --force, close the channels, remove bundle and workspace. Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            if self._first_channel is not None:
                self._first_channel.close()
                self._first_channel = None
        self.adapter.close()
        run = self._run
        if run is not None and run.poll() is None:
            # Kill the container and let our `runsc run` child reap it, then delete.
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(self._runsc("kill", self.id, "KILL"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=RUNSC_TIMEOUT_S, check=False)
            try:
                run.wait(RUNSC_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
        delete_container(self.runsc, self.state_dir, self.id)
        for proc in self._execs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        release_workspace(self.workspace)
        remove_files(self.dir)


def delete_container(runsc: str, state_dir: Path, sandbox_id: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run([runsc, "--root", str(state_dir / "runsc"), "delete", "--force",
                        sandbox_id], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=RUNSC_TIMEOUT_S, check=False)


def remove_files(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _owner_alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    return isinstance(pid, int) and record.get("start") is not None \
        and _process_start(pid) == record["start"]


def clean_stale(state_dir: Path, runsc: str) -> list[str]:
    """Remove sandboxes whose owner process is gone; return their ids."""
    removed = []
    sandboxes = state_dir / "sandboxes"
    if sandboxes.is_dir():
        for entry in sorted(sandboxes.iterdir()):
            if not entry.name.startswith(ID_PREFIX + "-"):
                continue
            try:
                record = json.loads((entry / "owner.json").read_text())
            except (OSError, ValueError):
                record = {}
            if _owner_alive(record):
                continue
            delete_container(runsc, state_dir, entry.name)
            release_workspace(state_dir / "workspaces" / entry.name)
            remove_files(entry)
            removed.append(entry.name)
    # Containers whose folder is gone (a crash between the two steps of a cleanup).
    try:
        listed = subprocess.run([runsc, "--root", str(state_dir / "runsc"), "list", "-quiet"],
                                capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S,
                                check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        listed = []
    for sandbox_id in listed:
        parts = sandbox_id.split("-")
        if len(parts) != 3 or parts[0] != ID_PREFIX or (sandboxes / sandbox_id).exists():
            continue
        if parts[1].isdigit() and int(parts[1]) != os.getpid() \
                and _process_start(int(parts[1])) is None:
            delete_container(runsc, state_dir, sandbox_id)
            removed.append(sandbox_id)
    workspaces = state_dir / "workspaces"
    if workspaces.is_dir():
        for entry in workspaces.iterdir():
            if not (sandboxes / entry.name).exists() and entry.name.startswith(ID_PREFIX) \
                    and not entry.name.startswith(f"{ID_PREFIX}-{os.getpid()}-"):
                release_workspace(entry)
    if removed:
        log.info("removed %d stale local sandbox(es): %s", len(removed), ", ".join(removed))
    return removed


# -- the process-wide manager and warm pools ---------------------------------------------------


class _Pool:
    """Spare ready sandboxes of one template, refilled in the background."""

    def __init__(self, manager: _Manager, template: LocalTemplate, size: int,
                 ready_timeout: float) -> None:
        self.manager = manager
        self.template = template
        self.size = size
        self.ready_timeout = ready_timeout
        self.ready: deque[LocalSandbox] = deque()
        self.wake = threading.Event()
        self.filled = threading.Condition()
        self.thread = threading.Thread(target=self._fill, name=f"sandbox-pool-{template.name}",
                                       daemon=True)
        self.thread.start()

    def take(self) -> LocalSandbox | None:
        with self.filled:
            sandbox = self.ready.popleft() if self.ready else None
        self.wake.set()
        return sandbox

    def wait_full(self, timeout: float) -> bool:
        """For tests and benchmarks: block until the pool holds `size` sandboxes."""
        deadline = time.monotonic() + timeout
        with self.filled:
            while len(self.ready) < self.size:
                left = deadline - time.monotonic()
                if left <= 0 or not self.filled.wait(left):
                    return len(self.ready) >= self.size
        return True

    def _fill(self) -> None:
        failures = 0
        while not self.manager.closing:
            if len(self.ready) >= self.size:
                self.wake.wait()
                self.wake.clear()
                # Let the sandbox just handed out run its first commands before a new
                # sandbox's start-up competes for the CPU (small machines).
                time.sleep(REFILL_DELAY_S)
                continue
            try:
                sandbox = self.manager.start_sandbox(self.template, self.ready_timeout,
                                                     warm_up=True)
            except Exception as exc:
                failures += 1
                log.warning("warm pool %s: could not start a sandbox: %s", self.template.name,
                            exc)
                if self.manager.closing or failures >= 3:
                    return  # the caller's own cold start reports the problem clearly
                time.sleep(1.0)
                continue
            failures = 0
            with self.filled:
                if self.manager.closing:
                    self.manager.release(sandbox)
                    return
                self.ready.append(sandbox)
                self.filled.notify_all()

    def drain(self) -> list[LocalSandbox]:
        self.wake.set()
        with self.filled:
            drained = list(self.ready)
            self.ready.clear()
        return drained


class _Manager:
    """All local sandboxes of this process under one state folder; removes them at exit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runsc = _runsc_binary()
        self.platform = os.environ.get(PLATFORM_ENV, "ptrace")
        self.live: dict[str, LocalSandbox] = {}
        self.pools: dict[LocalTemplate, _Pool] = {}
        self.lock = threading.Lock()
        self.closing = False
        self.cgroups = True
        for sub in ("", "runsc", "sandboxes", "workspaces"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        _compile_runtime()
        clean_stale(state_dir, self.runsc)
        atexit.register(self.shutdown)

    def start_sandbox(self, template: LocalTemplate, ready_timeout: float, *,
                      warm_up: bool = False) -> LocalSandbox:
        sandbox = LocalSandbox(template, self.state_dir, self.runsc, self.platform)
        with self.lock:
            if self.closing:
                raise SandboxConnectionError("the interpreter is shutting down")
            self.live[sandbox.id] = sandbox
        try:
            try:
                sandbox.start(cgroups=self.cgroups)
                sandbox.wait_ready(ready_timeout, warm_up=warm_up)
                if self.cgroups and not template.cpu_limit_millis and \
                        not set_cpu_quota(sandbox.id, cpu_limit_millis(template)):
                    log.warning("sandbox %s runs without a CPU bound", sandbox.id)
            except BackendUnavailableError:
                if not self.cgroups or "cgroup" not in sandbox.log_tail().lower():
                    raise
                # No writable cgroup hierarchy here (e.g. a nested container): resource
                # limits cannot apply; isolation does not depend on them.
                log.warning("runsc cannot create cgroups here; local sandboxes run without "
                            "CPU/memory limits: %s", sandbox.log_tail(300))
                self.cgroups = False
                sandbox.destroy()
                self.live.pop(sandbox.id, None)
                return self.start_sandbox(template, ready_timeout, warm_up=warm_up)
        except BaseException:
            self.release(sandbox)
            raise
        return sandbox

    def acquire(self, template: LocalTemplate, warm_pool: int,
                ready_timeout: float) -> LocalSandbox:
        """A ready sandbox: from the template's warm pool when it has one, else a cold start."""
        pool = self.pool(template, warm_pool, ready_timeout) if warm_pool > 0 else None
        sandbox = pool.take() if pool is not None else None
        if sandbox is not None:
            return sandbox
        return self.start_sandbox(template, ready_timeout)

    def pool(self, template: LocalTemplate, size: int, ready_timeout: float) -> _Pool:
        with self.lock:
            pool = self.pools.get(template)
            if pool is None:
                pool = self.pools[template] = _Pool(self, template, min(size, MAX_WARM_POOL),
                                                    ready_timeout)
            elif size > pool.size:
                pool.size = min(size, MAX_WARM_POOL)
                pool.wake.set()
            return pool

    def release(self, sandbox: LocalSandbox) -> None:
        with self.lock:
            self.live.pop(sandbox.id, None)
        sandbox.destroy()

    def shutdown(self) -> None:
        """Remove every sandbox of this process (atexit)."""
        with self.lock:
            self.closing = True
            pools = list(self.pools.values())
        for pool in pools:
            pool.drain()
            pool.thread.join(timeout=RUNSC_TIMEOUT_S)
        with self.lock:
            sandboxes = list(self.live.values())
            self.live.clear()
        for sandbox in sandboxes:
            sandbox.destroy()


_managers: dict[Path, _Manager] = {}
_managers_lock = threading.Lock()


def manager(state_dir: Path | None = None) -> _Manager:
    """The process's manager for a state folder (created, and stale sandboxes cleaned, once)."""
    path = (state_dir or _default_state_dir()).expanduser().resolve()
    with _managers_lock:
        found = _managers.get(path)
        if found is None or found.closing:
            found = _managers[path] = _Manager(path)
        return found


def _warm_pool_size(option: int | None, template: LocalTemplate) -> int:
    if option is not None:
        size = option
    elif os.environ.get(WARM_POOL_ENV):
        size = int(os.environ[WARM_POOL_ENV])
    else:
        size = template.warm_pool
    if size < 0:
        raise ValueError(f"warm_pool must be >= 0, not {size}")
    return size


class LocalBackend:
    """Backend that opens one local gVisor sandbox (see the module docstring)."""

    name = "local"

    def __init__(self, template_name: str, namespace: str = "default", *,
                 ready_timeout: float = 180.0,
                 templates_dir: str | os.PathLike[str] | None = None,
                 warm_pool: int | None = None,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        self.template_name = template_name
        self.namespace = namespace
        self.ready_timeout = ready_timeout
        self.templates_dir = templates_dir
        self.warm_pool = warm_pool
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.sandbox: LocalSandbox | None = None
        self._manager: _Manager | None = None

    def open(self) -> Endpoint:
        self._manager = manager(self.state_dir)
        template = load_template(self.template_name, template_dirs(self.templates_dir))
        if template.ignored:
            log.debug("template %s: fields that do not apply locally: %s", template.name,
                      ", ".join(template.ignored))
        self.sandbox = self._manager.acquire(template, _warm_pool_size(self.warm_pool, template),
                                             self.ready_timeout)
        return Endpoint(base_url=BASE_URL, adapter=self.sandbox.adapter,
                        sandbox_name=self.sandbox.id,
                        description=f"local gVisor sandbox {self.sandbox.id}")

    def close(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None and self._manager is not None:
            self._manager.release(sandbox)
