"""Layering: hook modules are pure; only hooks/app.py and the server modules touch HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[2] / "hooks"
PURE = sorted(
    p for p in HOOKS.glob("*.py") if p.stem not in {"app", "gunicorn_conf", "__main__", "__init__"}
)
ALLOWED_LOCAL = {"hooks", "hooks.objects", "hooks.schemas", "hooks.typedefs"}
FORBIDDEN = {
    "flask",
    "werkzeug",
    "gunicorn",
    "kubernetes",
    "requests",
    "urllib3",
    "aiohttp",
    "http",
    "socket",
    "subprocess",
    "random",
    "time",
    "prometheus_client",
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE, ids=lambda p: p.stem)
def test_hook_modules_import_only_pure_layers(module: Path):
    for name in imported_modules(module):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{module.name} imports {name}"
        if top == "hooks":
            assert name in ALLOWED_LOCAL, f"{module.name} imports {name}"


def test_there_are_pure_hook_modules_to_check():
    assert {p.stem for p in PURE} >= {"sandbox", "objects", "schemas", "typedefs"}
