"""SandboxTemplate YAML for the local backend: find a template by name, keep what applies here.

Called by agentic_sandbox._backends.local. Looks in the folders named by the caller or by
$AGENTIC_SANDBOX_TEMPLATES (os.pathsep-separated), then in the built-in folder
(agentic_sandbox/templates/, which holds the walkthrough's python-runtime-template). The
first folder that defines the name wins. SandboxWarmPool documents in the same folders set
the local warm pool size of their template. Pure parsing: starts nothing, touches no runsc.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from agentic_sandbox._exceptions import TemplateNotFoundError
from sandbox_common import contract
from sandbox_common.durations import idle_timeout_seconds

__all__ = ["TEMPLATES_ENV", "LocalTemplate", "load_template", "parse_cpu", "parse_memory",
           "template_dirs"]

TEMPLATES_ENV: Final = "AGENTIC_SANDBOX_TEMPLATES"
BUILTIN_DIR: Final = Path(__file__).resolve().parent / "templates"
API_GROUP: Final = f"{contract.EXTENSIONS_GROUP}/"
MAX_TEMPLATE_BYTES: Final = 1024 * 1024
# Fields of a pod template that have no meaning for a local runsc sandbox: the sandbox always
# runs this machine's sandbox-runtime under gVisor, on stdin/stdout, with no network.
IGNORED_FIELDS: Final = ("image", "command", "args", "ports", "readinessProbe",
                         "livenessProbe", "volumeMounts", "runtimeClassName", "volumes",
                         "restartPolicy",
                         "securityContext", "nodeSelector", "tolerations")

_MEMORY_UNITS: Final = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                        "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                        "Pi": 2**50, "Ei": 2**60}
_QUANTITY: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)([a-zA-Z]*)$")


@dataclass(frozen=True)
class LocalTemplate:
    """The parts of a SandboxTemplate that a local runsc sandbox applies."""

    name: str
    source: str  # the YAML file it came from
    env: tuple[tuple[str, str], ...] = ()
    cpu_request_millis: int | None = None  # -> cgroup cpu shares (like Kubernetes)
    cpu_limit_millis: int | None = None  # -> cgroup CFS quota
    memory_limit_bytes: int | None = None  # -> cgroup memory limit
    # -> size of the workspace's own filesystem (limits, else requests, ephemeral-storage)
    ephemeral_storage_bytes: int | None = None
    warm_pool: int = 0  # from a SandboxWarmPool naming this template
    idle_timeout_s: int | None = None  # spec.idleTimeout: pause after this long without a request
    ignored: tuple[str, ...] = field(default=(), compare=False)  # fields present, not applied


def parse_cpu(value: object) -> int:
    """Kubernetes CPU quantity -> millicores: "250m" -> 250, "1" -> 1000, 0.5 -> 500."""
    text = str(value).strip()
    try:
        millis = float(text[:-1]) if text.endswith("m") else float(text) * 1000
    except ValueError:
        raise ValueError(f"not a CPU quantity: {value!r}") from None
    if not millis > 0:
        raise ValueError(f"CPU quantity must be positive: {value!r}")
    return max(1, round(millis))


def parse_memory(value: object) -> int:
    """Kubernetes memory quantity -> bytes: "512Mi" -> 536870912, "1G" -> 10**9."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _MEMORY_UNITS:
        raise ValueError(f"not a memory quantity: {value!r}")
    amount = int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])
    if amount <= 0:
        raise ValueError(f"memory quantity must be positive: {value!r}")
    return amount


def template_dirs(option: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
                  environ: dict[str, str] | None = None) -> list[Path]:
    """The folders to search, in order: the option (or $AGENTIC_SANDBOX_TEMPLATES), built-in."""
    env = os.environ if environ is None else environ
    raw: list[str | os.PathLike[str]]
    if option is None:
        raw = [p for p in env.get(TEMPLATES_ENV, "").split(os.pathsep) if p]
    elif isinstance(option, str | os.PathLike):
        raw = [option]
    else:
        raw = list(option)
    return [Path(p).expanduser() for p in raw] + [BUILTIN_DIR]


def _documents(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not folder.is_dir():
        return
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes")
        with path.open(encoding="utf-8") as stream:
            try:
                docs = list(yaml.safe_load_all(stream))
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        for doc in docs:
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(API_GROUP):
                yield path, doc


def _ignored(pod_spec: dict[str, Any], container: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(key for key in IGNORED_FIELDS if key in container or key in pod_spec))


def _storage(limits: dict[str, Any], requests: dict[str, Any]) -> int | None:
    for quantities in (limits, requests):
        if "ephemeral-storage" in quantities:
            return parse_memory(quantities["ephemeral-storage"])
    return None


def _from_document(name: str, path: Path, doc: dict[str, Any]) -> LocalTemplate:
    spec = doc.get("spec") or {}
    pod_spec = (spec.get("podTemplate") or {}).get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not isinstance(containers, list) or not containers or not isinstance(containers[0],
                                                                            dict):
        raise ValueError(f"{path}: SandboxTemplate {name!r} has no containers")
    container = containers[0]
    env = []
    for item in container.get("env") or []:
        if isinstance(item, dict) and "name" in item and "value" in item:
            env.append((str(item["name"]), str(item["value"])))
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    try:
        return LocalTemplate(
            name=name, source=str(path), env=tuple(env),
            cpu_request_millis=parse_cpu(requests["cpu"]) if "cpu" in requests else None,
            cpu_limit_millis=parse_cpu(limits["cpu"]) if "cpu" in limits else None,
            memory_limit_bytes=parse_memory(limits["memory"]) if "memory" in limits else None,
            ephemeral_storage_bytes=_storage(limits, requests),
            idle_timeout_s=idle_timeout_seconds(spec.get("idleTimeout"), "spec.idleTimeout"),
            ignored=_ignored(pod_spec, container))
    except ValueError as exc:
        raise ValueError(f"{path}: SandboxTemplate {name!r}: {exc}") from exc


def load_template(name: str, dirs: Sequence[Path]) -> LocalTemplate:
    """The named template from the first folder that defines it, with its warm pool size.

    Raises:
        TemplateNotFoundError: no folder defines it (the message lists where it looked).
        ValueError: the YAML that defines it is malformed.
    """
    for folder in dirs:
        template: LocalTemplate | None = None
        pool = 0
        for path, doc in _documents(folder):
            meta = doc.get("metadata") or {}
            if doc.get("kind") == contract.TEMPLATE_KIND and meta.get("name") == name \
                    and template is None:
                template = _from_document(name, path, doc)
            elif doc.get("kind") == contract.POOL_KIND:
                spec = doc.get("spec") or {}
                if (spec.get("sandboxTemplateRef") or {}).get("name") == name:
                    pool = max(pool, int(spec.get("replicas") or 0))
        if template is not None:
            return dataclasses.replace(template, warm_pool=pool)
    searched = ", ".join(str(d) for d in dirs)
    raise TemplateNotFoundError(
        f"SandboxTemplate {name!r} not found in {searched}; put its YAML in a folder named "
        f"by templates_dir= or ${TEMPLATES_ENV}", reason=contract.TEMPLATE_NOT_FOUND)
