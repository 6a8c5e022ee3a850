"""Test tiers by directory: tests/<tier>/... is marked with the tier's marker.

So `pytest -m unit` or `pytest -m dataplane` needs no per-test decoration. A tier whose
infrastructure cannot run here skips with a reason; `-rs` (set in pyproject) prints it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.security_report"]

TIERS = ("unit", "http", "controlplane", "dataplane", "metacontroller")
TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.fspath).resolve().relative_to(TESTS_DIR.resolve())
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
