"""A named local sandbox's files: its folder, its record, and reserving or removing a name.

Used by every other room of agentic_sandbox._holder. Under the local backend's state folder:
`named/<name>/holder.json` (the holder's owner record: pid and start time, template,
namespace, sandbox id), `named/<name>/runtime.sock`, `named/<name>.log`, and `named/.lock`
(an flock held while a name is reserved or removed). A name is taken while its record's
holder runs (agentic_sandbox._backends.local.owner, zombies counting as gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from agentic_sandbox._backends.local.owner import owner_alive
from agentic_sandbox._backends.local.runsc import default_state_dir, private_state
from agentic_sandbox._exceptions import ClaimFailedError
from agentic_sandbox._named import validate_name

__all__ = ["NAMED", "RECORD", "SOCKET", "holder_running", "named_dir", "read_record", "remove",
           "reserve", "state_dir_of", "write_record"]

NAMED: Final = "named"
RECORD: Final = "holder.json"
SOCKET: Final = "runtime.sock"


def state_dir_of(state_dir: str | os.PathLike[str] | None) -> Path:
    """The local backend's state folder, resolved as the local backend resolves it."""
    return (Path(state_dir) if state_dir is not None else default_state_dir()).expanduser() \
        .resolve()


def named_dir(state_dir: str | os.PathLike[str] | None, name: str) -> Path:
    return state_dir_of(state_dir) / NAMED / validate_name(name)


def read_record(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def holder_running(record: dict[str, Any]) -> bool:
    """Whether the record's holder still runs: same pid and start time, and not a zombie."""
    return owner_alive(record)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    private_state(root.parent, root.name)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_record(directory: Path, record: dict[str, Any]) -> None:
    tmp = directory / (RECORD + ".new")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, directory / RECORD)


def reserve(root: Path, name: str, record: dict[str, Any]) -> Path:
    """Claim the name: its folder appears at once with a complete record in it."""
    final = root / name
    with _locked(root):
        existing = read_record(final)
        if final.exists():
            if existing is not None and holder_running(existing):
                raise ClaimFailedError(f"a local sandbox named {name!r} already exists",
                                       reason="AlreadyExists", claim=name)
            shutil.rmtree(final, ignore_errors=True)  # its holder is gone
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
        write_record(staging, record)
        os.rename(staging, final)
    return final


def remove(directory: Path) -> None:
    with _locked(directory.parent):
        shutil.rmtree(directory, ignore_errors=True)
