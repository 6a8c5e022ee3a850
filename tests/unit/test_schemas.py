"""schemas/ is the single source: CRDs are rendered from it and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hack import render_crds
from hooks import schemas

REPO = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_schemas():
    result = subprocess.run(
        [sys.executable, "-m", "hack.render_crds", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_render_detects_a_stale_crd(tmp_path, monkeypatch):
    monkeypatch.setattr(render_crds, "CRDS", tmp_path)
    files = render_crds.rendered()
    assert len([p for p in files if p.name != "kustomization.yaml"]) == 4
    for path, text in files.items():
        path.write_text(text)
    stale = next(p for p in files if p.name.startswith("sandboxes."))
    stale.write_text(stale.read_text().replace("maximum: 1", "maximum: 5"))
    monkeypatch.setattr(sys, "argv", ["render_crds", "--check"])
    assert render_crds.main() == 1


@pytest.mark.parametrize(
    ("kind", "spec", "field"),
    [
        (
            "sandbox",
            {"podTemplate": {"spec": {"containers": []}}},
            "spec.podTemplate.spec.containers",
        ),
        (
            "sandbox",
            {"podTemplate": {"spec": {"containers": [{"name": "c"}]}}, "replicas": 2},
            "spec.replicas",
        ),
        (
            "sandbox",
            {"podTemplate": {"spec": {"containers": [{"name": "c"}]}}, "shutdownTime": "tomorrow"},
            "spec.shutdownTime",
        ),
        ("sandbox", {}, "spec"),
        ("sandboxwarmpool", {"replicas": -1, "sandboxTemplateRef": {"name": "t"}}, "spec.replicas"),
        ("sandboxwarmpool", {"replicas": 1}, "spec"),
        (
            "sandboxclaim",
            {"sandboxTemplateRef": {"name": "Bad_Name"}},
            "spec.sandboxTemplateRef.name",
        ),
        (
            "sandboxclaim",
            {"sandboxTemplateRef": {"name": "t"}, "lifecycle": {"shutdownPolicy": "Explode"}},
            "spec.lifecycle.shutdownPolicy",
        ),
        ("sandboxtemplate", {"podTemplate": {"spec": {}}}, "spec.podTemplate.spec"),
    ],
)
def test_invalid_specs_are_reported_with_their_field(kind, spec, field):
    problems = schemas.validate(kind, spec)
    assert problems, f"{spec} should be invalid"
    assert any(p.startswith(field) for p in problems), problems


def test_seed_specs_are_valid():
    from testbed.hookrequests import SEED_POD_TEMPLATE

    assert schemas.validate("sandboxtemplate", {"podTemplate": SEED_POD_TEMPLATE}) == []
    assert (
        schemas.validate(
            "sandboxwarmpool",
            {"replicas": 2, "sandboxTemplateRef": {"name": "python-runtime-template"}},
        )
        == []
    )
    assert (
        schemas.validate(
            "sandboxclaim", {"sandboxTemplateRef": {"name": "python-runtime-template"}}
        )
        == []
    )
