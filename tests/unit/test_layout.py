"""The codebase's shape: no source file outside tests/ grows past what a newcomer reads at once.

Issue 14 set the bound; a file that passes it is split by concern (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 450
SOURCE_FOLDERS = ("agentic_sandbox", "bench", "hack", "hooks", "sandbox_common",
                  "sandbox_router", "sandbox_runtime", "testbed")


def test_no_source_file_outside_tests_is_over_450_lines():
    long = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(REPO))] = lines
    assert not long, f"split these by concern (at most {MAX_LINES} lines each): {long}"
