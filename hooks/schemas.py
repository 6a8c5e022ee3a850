"""Spec validation against schemas/*.json, the same schemas the CRDs are rendered from.

The API server already rejects invalid specs at admission; the hooks check again because a
parent may predate a schema change, and a hook must never act on a spec it cannot read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from hooks import k8srules

SOURCE_DIR = Path(__file__).resolve().parent.parent / "schemas"  # a checkout or editable install
INSTALLED_DIR = Path(sys.prefix) / "share" / "agent-sandbox" / "schemas"  # pip install


def schema_dir() -> Path:
    """SANDBOX_HOOKS_SCHEMA_DIR, else the checkout's schemas/, else the installed copy."""
    if "SANDBOX_HOOKS_SCHEMA_DIR" in os.environ:
        return Path(os.environ["SANDBOX_HOOKS_SCHEMA_DIR"])
    return SOURCE_DIR if SOURCE_DIR.is_dir() else INSTALLED_DIR


def inline_refs(node: Any, directory: Path) -> Any:
    """The schema with every `{"$ref": "<file>.json"}` replaced by that file's schema.

    CRDs cannot hold references, so shared parts (podtemplate.json) are written once and
    inlined wherever they are used, here for validation and in hack/render_crds.py for CRDs.
    """
    if isinstance(node, list):
        return [inline_refs(item, directory) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = json.loads((directory / node["$ref"]).read_text())
        shared = {k: v for k, v in target.items() if k not in ("$schema", "$id", "title")}
        return inline_refs({**shared, **{k: v for k, v in node.items() if k != "$ref"}}, directory)
    return {key: inline_refs(value, directory) for key, value in node.items()}


def document(kind: str, directory: Path | None = None) -> dict[str, Any]:
    """schemas/<kind>.json with references inlined."""
    directory = directory or schema_dir()
    return inline_refs(json.loads((directory / f"{kind}.json").read_text()), directory)


def _keys(validator: Any, kind: str, instance: Any, schema: dict[str, Any]) -> Any:
    """`x-keys`: a labels or annotations map whose keys (and label values) Kubernetes accepts."""
    for key, problem in k8srules.map_problems(kind, instance):
        yield ValidationError(problem, path=[key])


def _rule(validator: Any, rule: str, instance: Any, schema: dict[str, Any]) -> Any:
    """`x-rule`: a string that follows one of k8srules.RULES (a name, say)."""
    if isinstance(instance, str) and (problem := k8srules.RULES[rule].problem(instance)):
        yield ValidationError(problem)


def _duration(validator: Any, bounds: dict[str, str], instance: Any,
              schema: dict[str, Any]) -> Any:
    """`x-duration`: a duration string (90s, 15m, 1h30m) within its bounds."""
    if isinstance(instance, str) and (problem := k8srules.duration_problem(instance, bounds)):
        yield ValidationError(problem)


# Draft 2020-12 plus our keywords; hack/render_crds.py renders the same keywords for the CRDs.
Validator = validators.extend(
    Draft202012Validator, {"x-keys": _keys, "x-rule": _rule, "x-duration": _duration})


@cache
def spec_validator(kind: str) -> Any:
    """Validator for `spec` of one kind (lower-case Kubernetes singular: "sandbox", ...)."""
    spec_schema = document(kind)["properties"]["spec"]
    Validator.check_schema(spec_schema)
    return Validator(spec_schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _name_rule(kind: str) -> str | None:
    return document(kind).get("x-name")


def name_problems(kind: str, name: Any) -> list[str]:
    """Why `name` cannot be the name of a `kind` (its schema's `x-name`), or nothing."""
    rule = _name_rule(kind)
    problem = k8srules.RULES[rule].problem(name) if rule else None
    return [f"metadata.name: {problem}"] if problem else []


def problems(kind: str, obj: dict[str, Any]) -> list[str]:
    """Problems with a parent's name and spec, each naming its field; empty when valid."""
    name = (obj.get("metadata") or {}).get("name")
    return name_problems(kind, name) + validate(kind, obj.get("spec"))


def template_problems(template: dict[str, Any]) -> list[str]:
    """Problems with a SandboxTemplate that a pool or claim would copy into its children,
    each prefixed with the template's name (the template may predate today's CRD rules)."""
    name = (template.get("metadata") or {}).get("name")
    return [f"SandboxTemplate {name}: {p}" for p in problems("sandboxtemplate", template)]


def validate(kind: str, spec: Any) -> list[str]:
    """Problems with a spec, each naming its field (`spec.replicas: ...`); empty when valid."""
    if not isinstance(spec, dict):
        return ["spec: must be an object"]
    # Metacontroller resyncs the same spec again and again: validate each distinct one once,
    # remembering it by digest (a spec can be megabytes; its digest is 32 bytes).
    canonical = json.dumps(spec, sort_keys=True).encode()
    key = (kind, hashlib.sha256(canonical).digest())
    found = _results.get(key)
    del canonical  # a large spec should not be held twice while it is validated
    if found is None:
        found = _problems(kind, spec)
        _results.put(key, found)
    return list(found)


class ResultCache:
    """A least-recently-used map bounded by entries and by the bytes of the results it holds."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: OrderedDict[tuple[str, bytes], tuple[str, ...]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()  # gunicorn's threads share it

    @staticmethod
    def size(value: tuple[str, ...]) -> int:
        return 128 + sum(len(item) for item in value)

    def get(self, key: tuple[str, bytes]) -> tuple[str, ...] | None:
        with self.lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            return value

    def put(self, key: tuple[str, bytes], value: tuple[str, ...]) -> None:
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = value
            self.bytes += self.size(value)
            while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= self.size(dropped)


# At most 4,096 specs' results, 4 MiB of them: each result is at most MAX_PROBLEMS messages
# of MESSAGE_LIMIT characters, so a worker never holds more than that, whatever it is sent.
_results = ResultCache(max_entries=4096, max_bytes=4 * 1024 * 1024)
MAX_PROBLEMS = 20
MESSAGE_LIMIT = 400  # jsonschema quotes the offending value, which may be megabytes long


def _problems(kind: str, spec: dict[str, Any]) -> tuple[str, ...]:
    problems = []
    errors = sorted(spec_validator(kind).iter_errors(spec), key=lambda e: list(e.path))
    for error in errors[:MAX_PROBLEMS]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        message = f"spec{path}: {error.message}"
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 3] + "..."
        problems.append(message)
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS} more")
    return tuple(problems)
