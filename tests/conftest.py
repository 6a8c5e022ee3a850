"""Test tiers by directory: tests/<tier>/... is marked with the tier's marker.

So `pytest -m unit` or `pytest -m dataplane` needs no per-test decoration. A tier whose
external tools are missing skips with a reason; `-ra` (set in pyproject) prints it.

In CI (`CI` set to a true value, as .ci/run does) the control-plane and Metacontroller tiers
must run: a skipped test there is reported as a failure, with the skip's reason, so a missing
tool cannot turn the real control loop into a green run that tested nothing. The summary ends
with the tools those tiers ran on (etcd version, Metacontroller binary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.security_report"]

TIERS = ("unit", "http", "controlplane", "dataplane", "metacontroller")
MUST_RUN_IN_CI = ("controlplane", "metacontroller")
TESTS_DIR = Path(__file__).parent


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.fspath).resolve().relative_to(TESTS_DIR.resolve())
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    tier = next((t for t in MUST_RUN_IN_CI if item.get_closest_marker(t)), None)
    if tier is None:
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI, where the {tier} tier must run "
                       f"(CI={os.environ.get('CI')}): {skip_reason(report)}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """Name the real tools the control-plane and Metacontroller tiers ran on (or would have)."""
    reports = [r for outcome in ("passed", "failed", "skipped")
               for r in terminalreporter.getreports(outcome)]
    ran = {marker for r in reports for marker in MUST_RUN_IN_CI if marker in r.keywords}
    if not ran:
        return
    from testbed import kube
    from testbed.metacontroller import metacontroller_binary

    terminalreporter.section("real tools", sep="-")
    terminalreporter.write_line(f"control plane: kube-apiserver {kube.K8S_VERSION} "
                                f"({kube.BIN_DIR}), {kube.etcd_report()}")
    if "metacontroller" in ran:
        binary, why_not = metacontroller_binary()
        terminalreporter.write_line(f"Metacontroller: {binary or why_not}")
