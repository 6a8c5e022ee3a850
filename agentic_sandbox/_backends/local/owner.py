"""Owner records: which process a local sandbox (or a named sandbox's holder) belongs to.

Called by LocalSandbox.start() (it writes `owner.json`), the stale clean-up (it removes the
sandboxes whose owner is gone) and the named-sandbox holder (its `holder.json`). A record is
the owner's pid and its start time (field 22 of /proc/<pid>/stat): with the pid, the start
time identifies a process for good, since a reused pid has another one. Reads /proc only.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["owner_alive", "owner_record", "process_running", "process_state"]


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


def process_running(pid: Any, start: str | None = None) -> bool:
    """Whether a process runs: /proc lists it, not as a zombie, and (when `start` is given)
    with that start time. A zombie has ended: it only waits for its parent to collect its
    exit status, which may take as long as that parent likes."""
    found = process_state(pid)
    return found is not None and found[0] != "Z" and (start is None or found[1] == start)


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the record's owner still runs: the same pid and start time, not a zombie."""
    start = record.get("start")
    return start is not None and process_running(record.get("pid"), str(start))
