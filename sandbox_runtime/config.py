"""Settings of the runtime server: defaults, then SANDBOX_RUNTIME_* env, then the caller's mapping.

Called by app.create_app(), __main__.py and launch.py. The layering and conversion are
sandbox_common.settings (shared with the router); this module declares the knobs and checks
them. It must not start anything or touch the workspace beyond resolving its path.
`SANDBOX_BASE_DIR` (upstream's name) still selects the workspace; `SANDBOX_RUNTIME_BASE_DIR`
wins over it when both are set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from sandbox_common import settings

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
    # Entries of one directory upload (POST /archive/*); its files' bytes: max_upload_bytes.
    max_archive_entries: int = 100_000
    # rlimits of every command (and of its descendants, which inherit them).
    command_address_space_mib: int = 4096
    command_file_size_mib: int = 1024
    command_max_processes: int = 512
    # Background processes (POST /processes): how many run at once, their longest life.
    max_processes: int = 16
    max_process_timeout_s: float = 86400.0
    # Where the background processes' registry lives (outside the workspace); "": a folder
    # under the temporary directory named after the workspace (background.state_dir).
    state_dir: str = ""
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


def load(overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the environment, then `overrides` (keys are field names, any case);
    the workspace is resolved to its real path."""
    cfg = settings.load(Config, ENV_PREFIX, overrides, environ,
                        aliases={"base_dir": UPSTREAM_BASE_DIR_ENV})
    real = os.path.realpath(cfg.base_dir)
    return cfg if real == cfg.base_dir else replace(cfg, base_dir=real)


def describe(config: Config) -> str:
    """The settings as one JSON line, for the startup log."""
    return json.dumps({f.name: getattr(config, f.name) for f in fields(config)}, sort_keys=True)
