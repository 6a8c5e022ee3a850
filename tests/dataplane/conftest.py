"""Fixtures of the data-plane tier: real gVisor sandboxes through the local backend.

Skips the tier, with the reason and the fix, when runsc cannot run here (not installed, not
root, the runtime package missing). When runsc is installed and we are root, a sandbox that
fails to start is a failure, not a skip. Every sandbox lives under a per-session state folder
(never the user's ~/.cache), and the session ends by checking that no runsc container of ours
is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentic_sandbox import SandboxClient

TEMPLATE = "python-runtime-template"


def write_template(folder: Path, name: str, container: str) -> Path:
    """A one-container SandboxTemplate `name` in `folder`; `container` is more YAML fields of
    its container (`resources: ...`, `env: ...`). Returns the folder."""
    (folder / f"{name}.yaml").write_text(f"""\
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata: {{name: {name}}}
spec:
  podTemplate:
    spec:
      containers:
      - name: runtime
        image: unused
        {container}
""")
    return folder


def runsc_problem() -> str | None:
    if not (os.environ.get("AGENTIC_SANDBOX_RUNSC") or shutil.which("runsc")):
        return "gVisor runsc is not installed: run `make system` (apt-get install runsc)"
    if os.geteuid() != 0:
        return "not root: the local gVisor backend runs runsc as root"
    for module in ("sandbox_runtime", "flask"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable: pip install -e '.[runtime]'"
    return None


def containers(state_dir: Path) -> list[str]:
    """Ids of the runsc containers under our --root."""
    runsc = os.environ.get("AGENTIC_SANDBOX_RUNSC") or shutil.which("runsc") or "runsc"
    out = subprocess.run([runsc, "--root", str(state_dir / "runsc"), "list", "-quiet"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


@pytest.fixture(scope="session")
def runsc_ok() -> None:
    problem = runsc_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory, runsc_ok: None) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("sandbox-state")
    yield path
    from agentic_sandbox._backends import local
    local.manager(path).shutdown()
    left = containers(path)
    assert not left, f"runsc containers left behind: {left}"


@pytest.fixture
def open_sandbox(state_dir: Path) -> Iterator[object]:
    """Factory: open_sandbox(**options) -> an open local SandboxClient, closed afterwards."""
    opened: list[SandboxClient] = []

    def factory(**options: object) -> SandboxClient:
        client = SandboxClient(TEMPLATE, backend="local", state_dir=state_dir,
                               **options)  # type: ignore[arg-type]
        opened.append(client.open())
        return client

    yield factory
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def sandbox(state_dir: Path) -> Iterator[SandboxClient]:
    """One sandbox shared by a module's tests (each sandbox costs about a second)."""
    with SandboxClient(TEMPLATE, backend="local", state_dir=state_dir) as client:
        yield client
