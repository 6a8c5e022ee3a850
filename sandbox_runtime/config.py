"""Settings of the runtime server: defaults, then SANDBOX_RUNTIME_* env, then the caller's mapping.

Called by app.create_app() only. It parses and validates; it must not start anything or touch
the workspace beyond resolving its path. `SANDBOX_BASE_DIR` (upstream's name) still selects the
workspace; `SANDBOX_RUNTIME_BASE_DIR` wins over it when both are set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "SANDBOX_RUNTIME_"
UPSTREAM_BASE_DIR_ENV = "SANDBOX_BASE_DIR"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Every knob of the runtime; units are in the names."""

    base_dir: str = "/app"
    # Command deadline: used when a request names none; requests may not ask for more.
    default_timeout_s: float = 60.0
    max_timeout_s: float = 600.0
    # Per stream; output past the cap is read and discarded so the command never blocks.
    max_output_bytes: int = 1 * MIB
    max_upload_bytes: int = 1024 * MIB
    max_concurrent_commands: int = 32
    max_command_bytes: int = 256 * 1024
    max_env_entries: int = 256
    max_list_entries: int = 100_000
    # rlimits of every command (and of its descendants, which inherit them).
    command_address_space_mib: int = 4096
    command_file_size_mib: int = 1024
    command_max_processes: int = 512
    log_level: str = "INFO"
    # gunicorn worker processes (TCP mode); 0: one per CPU the pod may use, at most 8.
    workers: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "workers" and value == 0:
                continue  # "automatic"
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"setting {f.name} must be positive, got {value!r}")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must not exceed max_timeout_s")


def _coerce(name: str, raw: Any, kind: type) -> Any:
    """Turn an env string (or a test's value) into the field's type, with a clear error."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"setting {name}: expected a boolean, got {raw!r}")
    try:
        if kind is int:
            if isinstance(raw, float) or (isinstance(raw, str) and "." in raw):
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}: expected {kind.__name__}, got {raw!r}") from None
    return str(raw)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def load(overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the environment, then `overrides` (keys are field names, any case)."""
    env = os.environ if environ is None else environ
    known = {f.name: _TYPES[str(f.type)] for f in fields(Config)}
    values: dict[str, Any] = {}
    if UPSTREAM_BASE_DIR_ENV in env:
        values["base_dir"] = env[UPSTREAM_BASE_DIR_ENV]
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in known:
                values[name] = _coerce(key, raw, known[name])
    for key, raw in (overrides or {}).items():
        name = key.lower()
        if name not in known:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
        values[name] = _coerce(key, raw, known[name])
    values["base_dir"] = os.path.realpath(values.get("base_dir", Config.base_dir))
    return Config(**values)


def describe(config: Config) -> str:
    """The settings as one JSON line, for the startup log."""
    return json.dumps({f.name: getattr(config, f.name) for f in fields(config)}, sort_keys=True)
