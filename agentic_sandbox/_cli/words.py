"""The command line's words: the program's name, NAME:path, the command after --, KEY=VALUE.

Used by the subcommands (agentic_sandbox._cli.commands) and main(). Pure functions of
strings; a wrong word is a UsageError, which main() turns into exit status 2.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = ["PROG", "Location", "UsageError", "command_line", "environment", "parse_location"]

PROG: Final = "agentic-sandbox"
# NAME:path, NAME a sandbox name (as _named.NAME_PATTERN). Anything else is a local path,
# so `./a:b` or `/tmp/a:b` stay local, as with kubectl cp and scp.
LOCATION: Final = re.compile(r"([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?):(.*)", re.DOTALL)


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see; exits 2 with the usage."""


class Location(NamedTuple):
    """One side of `cp`, or the argument of `ls`/`rm`: a sandbox path or a local one."""

    sandbox: str | None  # None: a path on this machine
    path: str


def parse_location(text: str) -> Location:
    """`NAME:path` is a path in sandbox NAME (`NAME:` is its workspace); anything else,
    including `./NAME:path`, is local."""
    found = LOCATION.fullmatch(text)
    if found is None:
        return Location(None, text)
    return Location(found.group(1), found.group(2) or ".")


def command_line(words: Sequence[str]) -> str:
    """The shell command to run: one word is a command line as typed (`'ls | wc -l'`);
    several are argv, each quoted, so nothing is split or expanded twice."""
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("no command given (put it after --)")
    return words[0] if len(words) == 1 else shlex.join(words)


def environment(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env
