"""Render the CRDs under manifests/crds/ from schemas/*.json (`make manifests`).

schemas/ is the only place a field is described; the CRDs' openAPIV3Schema, printer columns
and subresources are derived here. Our keywords `x-name`, `x-keys`, `x-rule` and `x-duration`
(Kubernetes' rules for names, label and annotation maps, names in strings, durations) become
CEL rules and
`maxLength`/`pattern` rendered by hooks/k8srules.py, the module the hooks check them with.
`--check` exits 1 when the committed CRDs are stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from hooks import k8srules, schemas

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
CRDS = REPO / "manifests" / "crds"
# JSON Schema keywords that are not part of a Kubernetes structural schema.
NOT_OPENAPI = ("$schema", "$id", "title", "x-crd")
HEADER = "# Generated from schemas/{source} by `make manifests`; edit the schema, not this file.\n"


def structural(node: Any) -> Any:
    """A schema node with our keywords rendered as Kubernetes understands them."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural(v) for k, v in node.items()}
    if "x-keys" in out:
        out = k8srules.crd_map_schema(out["x-keys"], out)
    if "x-rule" in out:
        rule = k8srules.RULES[out.pop("x-rule")]
        out.update(maxLength=rule.max_length, pattern=f"^{rule.pattern}$")
    if "x-duration" in out:
        out = k8srules.crd_duration_schema(out)
    return out


def openapi_schema(schema: dict[str, Any]) -> dict[str, Any]:
    body = {k: copy.deepcopy(v) for k, v in structural(schema).items() if k not in NOT_OPENAPI}
    if "x-name" in body:
        rules = body.get("x-kubernetes-validations", [])
        body["x-kubernetes-validations"] = [k8srules.crd_name_rule(body.pop("x-name")), *rules]
    body["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        **body["properties"],
    }
    return body


def crd(schema: dict[str, Any]) -> dict[str, Any]:
    meta = schema["x-crd"]
    subresources: dict[str, Any] = {"status": {}}
    if "scale" in meta:
        subresources["scale"] = meta["scale"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{meta['plural']}.{meta['group']}"},
        "spec": {
            "group": meta["group"],
            "scope": "Namespaced",
            "names": {
                "kind": meta["kind"],
                "listKind": f"{meta['kind']}List",
                "plural": meta["plural"],
                "singular": meta["singular"],
                "shortNames": meta["shortNames"],
                "categories": meta["categories"],
            },
            "versions": [
                {
                    "name": meta["version"],
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": meta["printerColumns"],
                    "schema": {"openAPIV3Schema": openapi_schema(schema)},
                }
            ],
        },
    }


def rendered() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for source in sorted(SCHEMAS.glob("*.json")):
        schema = schemas.document(source.stem, SCHEMAS)
        if "x-crd" not in schema:
            continue  # a shared part, inlined where it is referenced
        doc = crd(schema)
        path = CRDS / f"{doc['metadata']['name']}.yaml"
        out[path] = HEADER.format(source=source.name) + yaml.safe_dump(doc, sort_keys=False)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(p.name for p in out),
    }
    out[CRDS / "kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    return out


def shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if manifests/crds is stale")
    args = parser.parse_args()
    files = rendered()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {shown(path)} (run `make manifests`)", file=sys.stderr)
        return 1 if stale else 0
    CRDS.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
