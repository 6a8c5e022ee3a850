"""How the runtime is launched inside a local sandbox: the argv of sandbox_runtime/launch.py.

Called by the local backend's OCI spec (agentic_sandbox._backends.local.spec: the sandbox's
first process) and `runsc exec` process spec (later runtimes), and by its manager, which
compiles the runtime's bytecode once (the host is read-only inside). The argv runs
`sandbox-runtime --stdio` with the workspace as its base folder, on the channel given as
stdin and stdout. This module starts nothing itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Final

__all__ = ["WORKSPACE", "compile_runtime", "runtime_argv", "visible_paths"]

WORKSPACE: Final = "/workspace"

def compile_runtime() -> None:
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


def runtime_argv() -> list[str]:
    """sandbox_runtime/launch.py run by path with -I -S -B (its docstring says why), found
    without importing the runtime (the backend checked that it is installed)."""
    spec = importlib.util.find_spec("sandbox_runtime")
    assert spec is not None and spec.origin is not None
    launch = os.path.join(os.path.dirname(spec.origin), "launch.py")
    return [sys.executable, "-I", "-S", "-B", launch, os.pathsep.join(_runtime_paths()),
            WORKSPACE]


def visible_paths() -> list[str]:
    """Host paths the runtime needs (the interpreter, the virtualenv, the runtime's source),
    bound read-only into the sandbox's otherwise empty root unless a system folder has them."""
    spec = importlib.util.find_spec("sandbox_runtime")
    source = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
    candidates = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
                  Path(sys.executable).resolve().parent.parent}
    if source is not None:
        candidates.add(source)
    return sorted(str(p) for p in candidates)
