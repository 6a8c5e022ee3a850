"""Settings from three layers: a dataclass's defaults < prefixed environment < a mapping.

Called by sandbox_router/config.py and sandbox_runtime/config.py, each with its own frozen
dataclass and prefix (SANDBOX_ROUTER_, SANDBOX_RUNTIME_). A field F is set by the variable
<PREFIX><F upper-cased>, or by the key F (any case) of the mapping; `aliases` names other
variables for a field that count below the prefixed one (upstream's SANDBOX_BASE_DIR). Values
are turned into the field's annotated type: bool, int, float, str, tuple[str, ...] (comma
separated); a field of any other type cannot be set this way.

It parses and converts only: it must not read files, start anything, or read the environment
at import time, and it imports nothing beyond the standard library (the runtime's `--stdio`
start-up imports it under gVisor, where every module costs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ValueError(raw)


def _int(raw: Any) -> int:
    # 1.5 or "1.5" for a count is a mistake to report, not to round.
    if isinstance(raw, (bool, float)) or (isinstance(raw, str) and "." in raw):
        raise ValueError(raw)
    return int(raw)


def _float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(raw)
    return float(raw)


def _strings(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return tuple(str(part) for part in raw)


# Keyed by the annotation as written (the dataclasses use `from __future__ import annotations`):
# the converter, and what a value must be.
CONVERTERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "bool": (_bool, "a boolean"), "int": (_int, "an integer"), "float": (_float, "a number"),
    "str": (str, "a string"), "tuple[str, ...]": (_strings, "a comma-separated list"),
}


def settable(cls: type) -> dict[str, tuple[Callable[[Any], Any], str]]:
    """The fields of dataclass `cls` that settings can set, with their converters."""
    found = {}
    for f in fields(cls):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in CONVERTERS:
            found[f.name] = CONVERTERS[kind]
    return found


def load(cls: type[T], prefix: str, overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None, *, aliases: Mapping[str, str] | None = None,
         rest: str | None = None) -> T:
    """`cls` built from its defaults, then the environment, then `overrides`.

    `environ` defaults to os.environ; prefixed variables that name no field are ignored
    (another version may know them). A key of `overrides` that names no field is a
    ValueError, unless `rest` names a field: then such keys are kept there, as a dict.
    Every conversion error is a ValueError naming the variable or key and the value.
    """
    env = os.environ if environ is None else environ
    known = settable(cls)
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    layers = [(variable, name, env[variable]) for name, variable in (aliases or {}).items()
              if variable in env]
    layers += [(prefix + name.upper(), name, env[prefix + name.upper()]) for name in known
               if prefix + name.upper() in env]
    for key, raw in (overrides or {}).items():
        if key.lower() in known:
            layers.append((key, key.lower(), raw))
        elif rest is not None:
            extra[key] = raw
        else:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
    for source, name, raw in layers:
        converter, expected = known[name]
        try:
            values[name] = converter(raw)
        except (TypeError, ValueError):
            raise ValueError(f"setting {source}: expected {expected}, got {raw!r}") from None
    if rest is not None:
        values[rest] = extra
    return cls(**values)
