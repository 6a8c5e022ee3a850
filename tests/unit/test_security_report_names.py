"""The security report counts earlier tests by name (tests/security_report.py, EXISTING): a
renamed test would silently stop the table from ever being rewritten, so every name must exist."""

from __future__ import annotations

import ast

from tests.security_report import EXISTING, REPO


def test_every_counted_earlier_test_still_exists():
    missing = []
    for node_id in EXISTING:
        path, _, name = node_id.partition("::")
        source = REPO / path
        names: set[str] = set()
        if source.exists():
            tree = ast.parse(source.read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name.split("[")[0] not in names:
            missing.append(node_id)
    assert not missing, f"renamed or removed; update EXISTING: {missing}"
