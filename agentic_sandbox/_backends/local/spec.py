"""The OCI runtime spec of one local sandbox, and its CPU bound once it runs.

Called by LocalSandbox.start() (agentic_sandbox._backends.local.sandbox), which writes
config.json (`runsc run`) and process.json (`runsc exec`) from these, and by the manager,
which sets the default CPU quota once a sandbox is ready. What a sandbox may see and use is
decided here: of the host, only its system folders (SYSTEM_DIRS) and the runtime's own
interpreter, packages and source, read-only, on an empty root (`<state>/rootfs`, made by
prepare_root); a private /tmp, the workspace bound read-write, uid 65534 without
capabilities, the template's resources in a cgroup. Pure functions of the template and paths,
except prepare_root (the root folder) and set_cpu_quota (a cgroup file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Final

from agentic_sandbox._backends.local.launch import WORKSPACE, runtime_argv, visible_paths
from agentic_sandbox._templates import LocalTemplate, parse_cpu, parse_memory

__all__ = ["CPU_ENV", "MEMORY_ENV", "PIDS_LIMIT", "ROOT_DIR", "SANDBOX_UID", "SYSTEM_DIRS",
           "cpu_limit_millis", "exec_process", "oci_spec", "prepare_root", "set_cpu_quota"]

log = logging.getLogger(__name__)

MEMORY_ENV: Final = "AGENTIC_SANDBOX_LOCAL_MEMORY"
CPU_ENV: Final = "AGENTIC_SANDBOX_LOCAL_CPU"
SANDBOX_UID: Final = 65534  # nobody: cannot read root-only host files such as /etc/shadow
DEFAULT_MEMORY_BYTES: Final = 2 * 2**30  # when a template sets no memory limit
DEFAULT_CPU_MILLIS: Final = 1000  # when a template sets no CPU limit (nor a larger request)
CPU_PERIOD_US: Final = 100_000
PIDS_LIMIT: Final = 1024  # a fork bomb ends the sandbox, not the host (design section 7)
TMP_SIZE: Final = "256m"
# The host folders a sandbox sees (read-only): the system's programs, libraries and settings.
# Nothing else of the host is there (its other folders may hold world-readable files with
# secrets: finding 46 of docs/security.md), except the runtime's own code (visible_paths).
SYSTEM_DIRS: Final = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ROOT_DIR: Final = "rootfs"  # under the state folder: the sandbox's empty, read-only root


def prepare_root(state_dir: Path) -> Path:
    """The sandbox's root, `<state>/rootfs`: the host's top-level symlinks among SYSTEM_DIRS
    (`/bin -> usr/bin` on a merged-/usr system) and empty folders where the spec mounts
    something (runsc cannot make them in a read-only root), mode 0755 so the sandbox's user
    may pass (the state folder above stays 0700). Called by the manager once per state folder
    and process (it made the folder)."""
    root = state_dir / ROOT_DIR
    for folder in SYSTEM_DIRS:
        link = root / folder.lstrip("/")
        if os.path.islink(folder) and not os.path.islink(link):
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                os.symlink(os.readlink(folder), link)
    for point in ["/proc", "/tmp", "/dev", "/sys", WORKSPACE, *host_binds()]:
        (root / point.lstrip("/")).mkdir(mode=0o755, parents=True, exist_ok=True)
    for made in (root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())):
        os.chmod(made, 0o755)
    return root


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def host_binds() -> list[str]:
    """The host folders bound read-only into the root: the system folders this host has (real
    folders; a symlink is copied by prepare_root) and the interpreter and the runtime's code,
    which may live anywhere (a virtualenv in a checkout, a pyenv under /root, a clone under
    /tmp, which is private), where no system folder has them."""
    system = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    return system + [p for p in visible_paths() if not any(_under(p, d) for d in system)]


def oci_spec(template: LocalTemplate, workspace: Path, state_dir: Path, sandbox_id: str,
             *, cgroups: bool = True) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of one sandbox."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.update(dict(template.env))
    # The first process is the first runtime, speaking on runsc run's stdin/stdout (no
    # `runsc exec`, no second interpreter start); once its channel ends it stays as the
    # sandbox's init (sandbox_runtime/launch.py). Later runtimes come in with `runsc exec`,
    # so a broken channel costs one runtime, never the sandbox.
    argv = runtime_argv()
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", f"size={TMP_SIZE}", "mode=1777"]},
    ]
    for path in host_binds():
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
        "root": {"path": str(state_dir / ROOT_DIR), "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": linux,
    }


def exec_process(spec: dict[str, Any]) -> dict[str, Any]:
    """The process spec `runsc exec --process` starts the runtime with: the sandbox's user,
    environment, capabilities (none) and limits, running sandbox_runtime/launch.py."""
    return spec["process"] | {"args": runtime_argv()}


def _default_memory() -> int:
    raw = os.environ.get(MEMORY_ENV)
    return parse_memory(raw) if raw else DEFAULT_MEMORY_BYTES


def cpu_limit_millis(template: LocalTemplate) -> int:
    """The sandbox's CPU bound (CFS quota): the template's limit (in the spec); else its
    request or the default (1 CPU, or $AGENTIC_SANDBOX_LOCAL_CPU), whichever is larger, set
    once the sandbox is ready (set_cpu_quota). A pod without a limit may use its node's
    idle CPU; a local sandbox must not take this whole machine."""
    if template.cpu_limit_millis:
        return template.cpu_limit_millis
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
