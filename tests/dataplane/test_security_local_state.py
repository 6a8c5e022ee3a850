"""Another user of this host against the local backend's state folder (real runsc).

Root writes bundles (the OCI spec runsc runs), owner records and workspace mount points
under the state folder. A state folder that another user owns or may write, or one under a
folder that user may write, lets that user swap what root writes for a symlink or a spec of
their own (finding 40 of docs/security.md: a root-owned file overwritten through a planted
`config.json` symlink). The backend must refuse such a folder before it writes anything, for
a client's sandbox and for a named one (`agentic-sandbox create`), and still take a private
folder under a sticky one like /tmp. Records through `hostile`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agentic_sandbox import SandboxClient
from agentic_sandbox._exceptions import BackendUnavailableError
from testbed.support import script
from tests.dataplane.conftest import TEMPLATE, containers

OTHER_UID = 1000  # any uid but ours; it need not exist


def owned_by_other(state: Path) -> Path:
    state.mkdir()
    os.chown(state, OTHER_UID, OTHER_UID)
    return state


def sub_folder_of_other(state: Path) -> Path:
    (state / "sandboxes").mkdir(parents=True)
    os.chown(state / "sandboxes", OTHER_UID, OTHER_UID)
    return state


def sub_folder_a_symlink(state: Path) -> Path:
    elsewhere = state.parent / "elsewhere"
    elsewhere.mkdir()
    state.mkdir()
    (state / "workspaces").symlink_to(elsewhere)
    return state


def sub_folder_a_dangling_symlink(state: Path) -> Path:
    state.mkdir()
    (state / "runsc").symlink_to(state.parent / "nowhere")
    return state


def under_a_folder_anyone_may_write(state: Path) -> Path:
    state.parent.chmod(0o777)
    return state


def under_a_folder_of_other(state: Path) -> Path:
    os.chown(state.parent, OTHER_UID, OTHER_UID)
    return state


SETUPS: dict[str, Callable[[Path], Path]] = {
    "the state folder belongs to another user": owned_by_other,
    "its sandboxes folder belongs to another user": sub_folder_of_other,
    "its workspaces folder is a symlink": sub_folder_a_symlink,
    "its runsc folder is a dangling symlink": sub_folder_a_dangling_symlink,
    "it lies in a folder anyone may write (no sticky bit)": under_a_folder_anyone_may_write,
    "it lies in a folder of another user": under_a_folder_of_other,
}


def written(state: Path) -> list[str]:
    """What the backend left under the state folder: bundles, workspaces, named records."""
    found = containers(state) if (state / "runsc").is_dir() else []
    for sub in ("sandboxes", "workspaces", "named"):
        folder = state / sub
        if folder.is_dir() and not folder.is_symlink():
            found += [f"{sub}/{p.name}" for p in folder.iterdir()]
    return found


@pytest.mark.parametrize("case", SETUPS)
def test_a_state_folder_another_user_can_change_is_refused(hostile, runsc_ok, tmp_path, case):
    with hostile("local", f"state folder: {case}"):
        (tmp_path / "box").mkdir()
        state = SETUPS[case](tmp_path / "box" / "state")
        with pytest.raises(BackendUnavailableError, match="is not private"):
            SandboxClient(TEMPLATE, backend="local", state_dir=state, warm_pool=0).open()
        assert written(state) == []


@pytest.mark.parametrize("case", ["the state folder belongs to another user",
                                  "it lies in a folder anyone may write (no sticky bit)"])
def test_a_named_sandbox_refuses_such_a_state_folder_too(hostile, runsc_ok, tmp_path, case):
    with hostile("local", f"state folder of `agentic-sandbox create`: {case}"):
        (tmp_path / "box").mkdir()
        state = SETUPS[case](tmp_path / "box" / "state")
        done = subprocess.run(
            [script("agentic-sandbox"), "create", "box", "--backend", "local"],
            env={**os.environ, "AGENTIC_SANDBOX_STATE_DIR": str(state)},
            capture_output=True, text=True, timeout=120, check=False)
        record = state / "named" / "box" / "holder.json"
        if record.exists():  # it was made (the gap): end its holder, which removes it
            os.kill(json.loads(record.read_text())["pid"], signal.SIGTERM)
        assert done.returncode == 1, done.stderr
        assert "is not private" in done.stderr and "Traceback" not in done.stderr
        assert written(state) == [] and not (state / "named" / "box.log").exists()


def test_a_private_state_folder_under_a_sticky_one_is_used(runsc_ok, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)  # like /tmp: anyone may write, nobody may rename another's entries
    with SandboxClient(TEMPLATE, backend="local", state_dir=shared / "state",
                       warm_pool=0) as sandbox:
        assert sandbox.run("echo ok").stdout == "ok\n"
    assert (shared / "state").stat().st_mode & 0o777 == 0o700
