"""Owner records: which process a local sandbox (or a named sandbox's holder) belongs to.

Called by LocalSandbox.start() (it writes `owner.json`), the stale clean-up (it removes the
sandboxes whose owner is gone) and the named-sandbox holder (its `holder.json`). A record is
the owner's pid and its start time (field 22 of /proc/<pid>/stat): with the pid, the start
time identifies a process for good, since a reused pid has another one. Reads /proc only.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["owner_alive", "owner_record", "process_state", "record_listed"]


def process_state(pid: Any) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc/<pid>/stat (fields 3 and 22), or None
    when /proc does not list it."""
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, TypeError, ValueError, IndexError):
        return None


def owner_record(**fields: Any) -> dict[str, Any]:
    """A record naming this process as the owner, with more fields."""
    found = process_state(os.getpid())
    return {"pid": os.getpid(), "start": found[1] if found else None, **fields}


def record_listed(record: dict[str, Any]) -> str | None:
    """The state of the record's process while /proc still lists it (a zombie too)."""
    if record.get("start") is None:
        return None
    found = process_state(record.get("pid"))
    return found[0] if found is not None and found[1] == record["start"] else None


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the record's owner still runs: the same pid and start time."""
    return record_listed(record) is not None
