"""Kubernetes' own rules for object names, label keys and values and annotation keys: written
once here, checked by the hooks and rendered into the CRDs.

The hooks copy names, labels and annotations from parents into children; a value the API
server refuses there would leave the parent stuck with no reason. schemas/*.json mark where
these rules apply with keywords of ours, and this module is their only definition:

- `"x-name": "<rule>"` on a kind's root: its `metadata.name` must follow the rule;
- `"x-keys": "labels" | "annotations"` on a map: its keys must be qualified names, and for
  labels its values label values;
- `"x-duration": {"minimum": "2s", "maximum": "8760h"}` on a string: a duration as
  Kubernetes writes one (`90s`, `15m`, `1h30m`: hours, minutes, seconds, in that order),
  within the bounds (`duration_problem`, from sandbox_common.durations; the CRD checks it
  with CEL's `duration()`).

hooks/schemas.py checks them in Python (`problems_*`); hack/render_crds.py turns them into
`x-kubernetes-validations` CEL rules and OpenAPI `maxLength`/`pattern` (`cel_*`, `RULES`), so
the API server refuses at admission exactly what the hooks would report as InvalidSpec
(tests/controlplane/test_label_rules.py compares the two on a corpus). Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox_common import durations


@dataclass(frozen=True)
class Rule:
    pattern: str  # unanchored; RE2 and Python `re` read it alike
    max_length: int
    says: str  # what a valid value looks like, for messages

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if len(value) > self.max_length or not re.fullmatch(self.pattern, value):
            return f"{value[:80]!r} is not valid: {self.says}"
        return None

    def cel(self, var: str) -> str:
        regex = f"^{self.pattern}$".replace("\\", "\\\\").replace("'", "\\'")  # a CEL literal
        return f"size({var}) <= {self.max_length} && {var}.matches('{regex}')"


RULES = {
    "dns1123-label": Rule(
        r"[a-z0-9]([-a-z0-9]*[a-z0-9])?",
        63,
        "a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending "
        "with a letter or digit",
    ),
    "dns1035-label": Rule(
        r"[a-z]([-a-z0-9]*[a-z0-9])?",
        63,
        "a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a "
        "letter and ending with a letter or digit",
    ),
    "dns1123-subdomain": Rule(
        r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
        253,
        "a DNS-1123 subdomain of at most 253 characters",
    ),
    "name-part": Rule(
        r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]",
        63,
        "at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or "
        "digit",
    ),
    "label-value": Rule(
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?",
        63,
        "empty, or at most 63 letters, digits, '-', '_' and '.', starting and ending with a "
        "letter or digit",
    ),
}
# A duration: sandbox_common.durations defines it (the client reads durations too).
DURATION = Rule(durations.PATTERN, durations.MAX_LENGTH, durations.SAYS)
QUALIFIED_NAME = (
    "a qualified name: an optional prefix (a DNS-1123 subdomain of at most 253 characters) "
    "and '/', then a name of " + RULES["name-part"].says
)
KEY_KINDS = ("labels", "annotations")


def qualified_name_problem(key: Any) -> str | None:
    """Why `key` cannot be a label or annotation key, or None."""
    if not isinstance(key, str):
        return "must be a string"
    prefix, slash, name = key.rpartition("/") if "/" in key else ("", "", key)
    if slash and ("/" in prefix or RULES["dns1123-subdomain"].problem(prefix)):
        return f"{key[:80]!r} is not {QUALIFIED_NAME}"
    if RULES["name-part"].problem(name):
        return f"{key[:80]!r} is not {QUALIFIED_NAME}"
    return None


def map_problems(kind: str, mapping: Any) -> list[tuple[str, str]]:
    """(key, problem) for every key (and, for labels, value) the API server would refuse."""
    if not isinstance(mapping, dict):
        return []
    found = []
    for key, value in sorted(mapping.items()):
        problem = qualified_name_problem(key)
        if problem:
            found.append((key, f"key {problem}"))
        elif kind == "labels" and (problem := RULES["label-value"].problem(value)):
            found.append((key, f"value {problem}"))
    return found


duration_seconds = durations.duration_seconds
duration_problem = durations.duration_problem


# ---- CEL and OpenAPI for the CRDs (hack/render_crds.py) -------------------------------------


def cel_qualified_name(var: str) -> str:
    """CEL that holds when the string `var` is a qualified name (as qualified_name_problem)."""
    prefix = f"{var}.substring(0, {var}.lastIndexOf('/'))"
    name = f"{var}.substring({var}.lastIndexOf('/') + 1)"
    return (
        f"({var}.contains('/') ? ({RULES['dns1123-subdomain'].cel(prefix)} && "
        f"{RULES['name-part'].cel(name)}) : {RULES['name-part'].cel(var)})"
    )


def crd_name_rule(rule: str) -> dict[str, str]:
    return {
        "rule": RULES[rule].cel("self.metadata.name"),
        "message": f"metadata.name must be {RULES[rule].says}",
    }


def crd_map_schema(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a map of strings marked `x-keys: kind`) as a structural CRD schema."""
    out = {k: v for k, v in schema.items() if k != "x-keys"}
    out["x-kubernetes-validations"] = [
        *out.get("x-kubernetes-validations", []),
        {
            "rule": f"self.all(k, {cel_qualified_name('k')})",
            "message": f"every {kind[:-1]} key must be {QUALIFIED_NAME}",
        },
    ]
    if kind == "labels":
        values = dict(out.get("additionalProperties") or {"type": "string"})
        values["maxLength"] = RULES["label-value"].max_length
        values["pattern"] = f"^{RULES['label-value'].pattern}$"
        out["additionalProperties"] = values
    return out


def crd_duration_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a string marked `x-duration: bounds`) as a structural CRD schema."""
    bounds = schema["x-duration"]
    out = {k: v for k, v in schema.items() if k != "x-duration"}
    out.update(maxLength=DURATION.max_length, pattern=f"^({DURATION.pattern})$")
    checks = [f"duration(self) {op} duration('{bounds[key]}')"
              for key, op in (("minimum", ">="), ("maximum", "<=")) if key in bounds]
    if checks:
        says = " and ".join(f"{'at least' if k == 'minimum' else 'at most'} {bounds[k]}"
                            for k in ("minimum", "maximum") if k in bounds)
        out["x-kubernetes-validations"] = [
            *out.get("x-kubernetes-validations", []),
            {"rule": " && ".join(checks), "message": f"must be {DURATION.says}, {says}"},
        ]
    return out
