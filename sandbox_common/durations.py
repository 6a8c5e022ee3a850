"""Durations as Kubernetes writes them (`90s`, `15m`, `1h30m`), and the idle timeout's bounds.

One definition for every side that reads a duration: the hooks and the CRDs
(hooks/k8srules.py builds its DURATION rule and CEL from these) and the client, which reads a
SandboxTemplate's `idleTimeout` for the local backend and takes `idle_timeout=` (a duration
or whole seconds). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["IDLE_TIMEOUT_BOUNDS", "MAX_LENGTH", "PATTERN", "SAYS", "duration_problem",
           "duration_seconds", "idle_timeout_seconds"]

# Whole hours, minutes and seconds, in that order, at least one of them (a subset of Go's
# time.ParseDuration, which CEL's duration() reads, so both sides agree). Unanchored.
PATTERN: Final = r"[0-9]+h([0-9]+m)?([0-9]+s)?|[0-9]+m([0-9]+s)?|[0-9]+s"
MAX_LENGTH: Final = 20
SAYS: Final = "a duration such as 90s, 15m or 1h30m"
# `x-duration` of idleTimeout in schemas/sandboxtemplate.json, sandboxclaim.json, sandbox.json
# (tests/unit/test_durations.py checks that they agree).
IDLE_TIMEOUT_BOUNDS: Final = {"minimum": "2s", "maximum": "8760h"}
_UNITS: Final = {"h": 3600, "m": 60, "s": 1}


def _problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_LENGTH or not re.fullmatch(PATTERN, value):
        return f"{value[:80]!r} is not valid: {SAYS}"
    return None


def duration_seconds(value: str) -> int:
    """Seconds in a duration (raises ValueError when `value` is not one)."""
    if _problem(value):
        raise ValueError(f"{value!r} is not {SAYS}")
    total, number = 0, ""
    for char in value:
        if char.isdigit():
            number += char
        else:
            total += int(number) * _UNITS[char]
            number = ""
    return total


def duration_problem(value: Any, bounds: dict[str, str]) -> str | None:
    """Why `value` is not a duration within `bounds` ({"minimum", "maximum"}), or None."""
    problem = _problem(value)
    if problem:
        return problem
    seconds = duration_seconds(value)
    low, high = bounds.get("minimum"), bounds.get("maximum")
    if low is not None and seconds < duration_seconds(low):
        return f"{value!r} is shorter than {low}"
    if high is not None and seconds > duration_seconds(high):
        return f"{value!r} is longer than {high}"
    return None


def idle_timeout_seconds(value: object, where: str = "idle_timeout") -> int | None:
    """An idle timeout in seconds: None stays None; a duration string or whole seconds within
    IDLE_TIMEOUT_BOUNDS; anything else raises ValueError naming `where`."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value}s"
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError(f"{where} must be a duration such as '90s' or whole seconds, "
                         f"not {value!r}")
    problem = duration_problem(text, IDLE_TIMEOUT_BOUNDS)
    if problem:
        raise ValueError(f"{where}: {problem}")
    return duration_seconds(text)
