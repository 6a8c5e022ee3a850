"""Stale clean-up: remove the local sandboxes whose owner process is gone.

Called once per state folder by the manager (agentic_sandbox._backends.local.manager) when
a process first uses the local backend, and by `agentic-sandbox delete` after a holder died.
A sandbox left by a crash, SIGKILL or SIGTERM without atexit keeps its owner record
(`<state>/sandboxes/<id>/owner.json`, agentic_sandbox._backends.local.owner); when that
owner no longer runs, its runsc container, workspace and bundle are removed. Sandboxes of
live owners, this process's included, are never touched.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from agentic_sandbox._backends.local.owner import owner_alive, process_running
from agentic_sandbox._backends.local.runsc import ID_PREFIX, delete_container, list_containers
from agentic_sandbox._backends.local.workspace import release_workspace, remove_files

__all__ = ["clean_stale"]

log = logging.getLogger(__name__)


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
            if isinstance(record, dict) and owner_alive(record):
                continue
            delete_container(runsc, state_dir, entry.name)
            release_workspace(state_dir / "workspaces" / entry.name)
            remove_files(entry)
            removed.append(entry.name)
    # Containers whose folder is gone (a crash between the two steps of a cleanup).
    for sandbox_id in list_containers(runsc, state_dir):
        parts = sandbox_id.split("-")
        if len(parts) != 3 or parts[0] != ID_PREFIX or (sandboxes / sandbox_id).exists():
            continue
        if parts[1].isdigit() and int(parts[1]) != os.getpid() \
                and not process_running(int(parts[1])):
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
