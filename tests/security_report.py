"""pytest plugin: count hostile inputs tried and held, and write the table in docs/security.md.

Loaded from tests/conftest.py (`pytest_plugins = ["tests.security_report"]`). Adversarial
tests take the `hostile` fixture and record each hostile input they try:

    def test_symlink_swap(hostile, runtime):
        with hostile("runtime", "symlink swapped in during an upload"):
            ...  # assertions; an exception inside the block records "not held"

or `hostile.record(surface, case, held)` (the fuzz tests record one line per example).
Adversarial tests that predate this plugin are counted, not rewritten: `EXISTING` names them,
and each of their items that passes counts as one hostile input held (an xfail as a known gap).

At the end of the session the table between `<!-- security:begin -->` and
`<!-- security:end -->` in docs/security.md is rewritten, but only when the run included every
security module and every test this plugin counts (a partial run must not overwrite the
full figures with smaller ones), and every test that took `hostile` recorded something.
`SECURITY_REPORT=0` turns the rewrite off. It must never change a test's outcome.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DOC = REPO / "docs" / "security.md"
# A module-level test function (the report's unit of "a test exists")
TOP_LEVEL_TEST = re.compile(r"^(?:async[ \t]+)?def[ \t]+(test_\w+)", re.M)
BEGIN, END = "<!-- security:begin -->", "<!-- security:end -->"
SECURITY_GLOBS = ("unit/test_security_*.py", "http/test_security_*.py",
                  "dataplane/test_security_*.py")

# Surfaces, in table order, with what each one is.
SURFACES = {
    "hooks": "Metacontroller hooks (`hooks/`): envelopes, specs, floods",
    "pods": "Pods and policies the hooks generate (cold, warm, claim)",
    "runtime": "Runtime server in the pod (`sandbox_runtime/`)",
    "router": "Router (`sandbox_router/`)",
    "local": "Local `runsc` backend (`agentic_sandbox/`)",
    "client": "Client SDK facing a hostile sandbox (`agentic_sandbox/`)",
    "mcp": "MCP stdio server facing a hostile MCP client (`agentic_sandbox/_mcp.py`)",
}

# Adversarial tests written before this plugin: "path::function" -> surface. Each passing item
# (every parametrized case) counts as one hostile input held.
EXISTING: dict[str, str] = {
    # hooks
    "tests/http/test_hooks_http.py::test_malformed_requests_get_400_with_a_json_error": "hooks",
    "tests/http/test_hooks_http.py::test_unknown_hook_is_404": "hooks",
    "tests/http/test_hooks_http.py::test_oversized_body_is_413": "hooks",
    "tests/http/test_hooks_http.py::test_a_hook_that_crashes_answers_500_never_200": "hooks",
    "tests/unit/test_hooks_contract.py::test_bad_spec_keeps_every_observed_child_and_says_why":
        "hooks",
    "tests/unit/test_hooks_sandbox.py::test_invalid_spec_keeps_every_observed_child_and_names_the_field":
        "hooks",
    "tests/unit/test_hooks_sandbox.py::test_name_too_long_for_a_service_is_reported_not_acted_on":
        "hooks",
    "tests/unit/test_hooks_scenarios.py::test_many_claims_at_once_never_share_a_pod": "hooks",
    "tests/unit/test_hooks_scenarios.py::test_property_warm_pods_serve_one_sandbox_uid_ever_and_are_never_pulled_from_a_live_claim":
        "hooks",
    # generated pods
    "tests/unit/test_hooks_sandbox.py::test_pod_honours_template_labels_and_annotations_but_not_reserved_keys":
        "pods",
    "tests/unit/test_hooks_sandbox.py::test_pod_gets_the_restricted_defaults_where_the_template_is_silent":
        "pods",
    "tests/unit/test_hooks_contract.py::test_template_network_policy_fences_ingress_and_private_egress":
        "pods",
    # runtime
    "tests/http/test_runtime_safety.py::test_timeout_kills_setsid_and_double_forked_escapes":
        "runtime",
    "tests/http/test_runtime_safety.py::test_timeout_answers_even_when_the_shell_exits_but_a_child_holds_stdout":
        "runtime",
    "tests/http/test_runtime_safety.py::test_infinite_printer_is_capped_and_flagged": "runtime",
    "tests/http/test_runtime_safety.py::test_large_finite_output_is_truncated_but_exit_code_kept":
        "runtime",
    "tests/http/test_runtime_safety.py::test_concurrency_bound_answers_429_at_once": "runtime",
    "tests/http/test_runtime_safety.py::test_commands_carry_the_configured_rlimits": "runtime",
    "tests/http/test_runtime_safety.py::test_memory_bomb_fails_alone": "runtime",
    "tests/http/test_runtime_safety.py::test_disk_filler_stops_at_the_file_size_limit": "runtime",
    "tests/http/test_runtime_safety.py::test_fork_bomb_is_contained_and_the_server_survives":
        "runtime",
    "tests/http/test_runtime_api.py::test_execute_hides_server_settings_and_command_variable":
        "runtime",
    "tests/http/test_runtime_api.py::test_execute_rejects_bad_fields_naming_them": "runtime",
    "tests/http/test_runtime_api.py::test_execute_rejects_non_object_bodies": "runtime",
    "tests/http/test_runtime_api.py::test_execute_cwd_outside_or_missing": "runtime",
    "tests/http/test_runtime_api.py::test_paths_outside_the_workspace_are_forbidden": "runtime",
    "tests/http/test_runtime_api.py::test_upload_outside_the_workspace_is_forbidden": "runtime",
    "tests/http/test_runtime_api.py::test_upload_onto_a_symlink_pointing_outside_is_forbidden":
        "runtime",
    "tests/http/test_runtime_api.py::test_upload_over_the_cap_is_413_and_leaves_nothing":
        "runtime",
    "tests/http/test_runtime_api.py::test_upload_over_the_cap_without_length_is_413": "runtime",
    "tests/http/test_runtime_api.py::test_malformed_uploads_are_400": "runtime",
    "tests/http/test_runtime_stdio.py::test_malformed_request_gets_400_and_exit_1": "runtime",
    # router
    "tests/http/test_router_ssrf.py::test_malformed_sandbox_names_are_400": "router",
    "tests/http/test_router_ssrf.py::test_address_like_labels_are_unknown_sandboxes": "router",
    "tests/http/test_router_ssrf.py::test_other_namespaces_sandboxes_are_unknown": "router",
    "tests/http/test_router_ssrf.py::test_malformed_namespaces_are_400": "router",
    "tests/http/test_router_ssrf.py::test_malformed_ports_are_400": "router",
    "tests/http/test_router_ssrf.py::test_undeclared_port_is_404_even_when_something_listens_there":
        "router",
    "tests/http/test_router_ssrf.py::test_sandbox_addresses_the_policy_forbids_are_never_dialled":
        "router",
    "tests/http/test_router_ssrf.py::test_sandbox_without_an_address_is_502": "router",
    "tests/http/test_router_ssrf.py::test_host_header_does_not_choose_the_target": "router",
    "tests/http/test_router_ssrf.py::test_absolute_and_authority_form_targets_are_refused":
        "router",
    "tests/http/test_router_ssrf.py::test_repeated_routing_headers_are_ambiguous": "router",
    "tests/http/test_router_ssrf.py::test_default_policy_refuses_loopback": "router",
    "tests/http/test_router_failures.py::test_upstream_slower_than_the_timeout_header_is_504":
        "router",
    "tests/http/test_router_failures.py::test_timeout_header_is_capped_by_the_server_maximum":
        "router",
    "tests/http/test_router_failures.py::test_malformed_timeout_header_is_400": "router",
    "tests/http/test_router_failures.py::test_stall_after_the_answer_began_cuts_the_client_connection":
        "router",
    "tests/http/test_router_failures.py::test_stall_before_a_small_answer_is_whole_is_504":
        "router",
    "tests/http/test_router_failures.py::test_upstream_closing_without_an_answer_is_502": "router",
    "tests/http/test_router_failures.py::test_upstream_answering_garbage_is_502": "router",
    "tests/http/test_router_failures.py::test_upstream_cutting_a_small_body_short_is_502":
        "router",
    "tests/http/test_router_failures.py::test_upstream_cutting_the_body_short_breaks_the_client_body":
        "router",
    "tests/http/test_router_failures.py::test_declared_body_over_the_limit_is_413_before_connecting":
        "router",
    "tests/http/test_router_failures.py::test_chunked_body_over_the_limit_is_cut_off": "router",
    "tests/http/test_router_failures.py::test_ambiguous_framing_is_refused_and_smuggles_nothing":
        "router",
    "tests/http/test_router_auth.py::test_missing_or_wrong_credentials_are_401": "router",
    "tests/http/test_router_auth.py::test_authentication_comes_before_routing": "router",
    "tests/http/test_router_auth.py::test_router_refuses_to_start_without_a_token": "router",
    "tests/http/test_router_forwarding.py::test_routing_credentials_and_hop_by_hop_headers_are_stripped":
        "router",
    "tests/http/test_router_forwarding.py::test_set_cookie_passes_through_and_is_not_kept":
        "router",
    "tests/http/test_router_forwarding.py::test_redirects_are_returned_not_followed": "router",
    "tests/unit/test_router_addresses.py::test_dangerous_addresses_are_refused_even_with_loopback_allowed":
        "router",
    "tests/unit/test_router_addresses.py::test_loopback_is_refused_by_default": "router",
    "tests/unit/test_router_addresses.py::test_only_canonical_spellings_parse": "router",
    "tests/unit/test_router_addresses.py::test_allowed_cidrs_do_not_reopen_what_is_always_refused":
        "router",
    "tests/unit/test_router_headers.py::test_bad_names_are_refused": "router",
    "tests/unit/test_router_headers.py::test_bad_ports_are_refused": "router",
    "tests/unit/test_router_headers.py::test_bad_timeouts_are_refused": "router",
    "tests/unit/test_router_headers.py::test_repeated_routing_header_is_refused": "router",
    "tests/unit/test_router_resolve.py::test_resolver_refusals_carry_their_status": "router",
    "tests/unit/test_router_resolve.py::test_service_fqdn_is_used_only_under_the_sandboxes_own_name":
        "router",
    "tests/unit/test_router_resolve.py::test_static_source_refuses_bad_files": "router",
    "tests/unit/test_router_resolve.py::test_static_loopback_needs_the_explicit_flag": "router",
    "tests/unit/test_router_resolve.py::test_cache_ignores_errors_and_malformed_events": "router",
    # finding 20: a name-only connection re-used across a re-creation of the name
    "tests/http/test_router_identity.py::test_a_name_only_connection_reused_across_a_recreation_reaches_the_new_pod":
        "router",
    # local runsc backend
    "tests/dataplane/test_client_local_isolation.py::test_no_connection_to_host_loopback": "local",
    "tests/dataplane/test_client_local_isolation.py::test_no_route_to_any_outside_address":
        "local",
    "tests/dataplane/test_client_local_isolation.py::test_no_write_outside_the_workspace_and_host_unchanged":
        "local",
    "tests/dataplane/test_client_local_isolation.py::test_tmp_is_private": "local",
    "tests/dataplane/test_client_local_isolation.py::test_unprivileged_and_host_secrets_hidden":
        "local",
    "tests/dataplane/test_client_local_isolation.py::test_state_folder_is_hidden": "local",
    "tests/dataplane/test_client_local_files.py::test_paths_outside_the_workspace_are_403": "local",
    "tests/dataplane/test_client_local_files.py::test_symlink_escape_is_403": "local",
    "tests/dataplane/test_client_local_run.py::test_timeout_kills_the_command_tree": "local",
    "tests/dataplane/test_client_local_run.py::test_abandoned_stream_kills_its_command": "local",
}


@dataclass
class Tally:
    tried: int = 0
    held: int = 0
    gaps: int = 0  # not held, in a test marked xfail: a known, reported gap
    broken: int = 0  # not held, in a test that failed
    new: int = 0  # recorded through `hostile`
    existing: int = 0  # counted from EXISTING
    gap_cases: list[str] = field(default_factory=list)
    broken_cases: list[str] = field(default_factory=list)


@dataclass
class State:
    # nodeid -> [(surface, case, held)] recorded through the fixture
    records: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)
    collected: set[str] = field(default_factory=set)  # "path::function" of collected items
    partial: list[str] = field(default_factory=list)


STATE = pytest.StashKey[State]()


class Hostile:
    """What an adversarial test records its hostile inputs with."""

    def __init__(self, state: State, nodeid: str) -> None:
        self._records = state.records.setdefault(nodeid, [])

    def record(self, surface: str, case: str, held: bool) -> None:
        if surface not in SURFACES:
            raise ValueError(f"unknown surface {surface!r}; one of {sorted(SURFACES)}")
        self._records.append((surface, case, bool(held)))

    @contextlib.contextmanager
    def __call__(self, surface: str, case: str) -> Iterator[None]:
        """Held if the block finishes; not held (and the error goes on) if it raises."""
        try:
            yield
        except BaseException:
            self.record(surface, case, False)
            raise
        self.record(surface, case, True)

    @property
    def count(self) -> int:
        return len(self._records)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    state = request.config.stash[STATE]
    recorder = Hostile(state, request.node.nodeid)
    yield recorder
    if recorder.count == 0:
        state.unrecorded.append(request.node.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[STATE] = State()


def _function_id(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        key = _function_id(item.nodeid)
        if key in EXISTING or "/test_security_" in key:
            item.config.stash[STATE].partial.append(key)


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash[STATE]
    state.collected = {_function_id(item.nodeid) for item in session.items}


# nodeid -> passed | failed | skipped | xfailed (the hook below gets no config to stash it in)
_outcomes: dict[str, str] = {}


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The call phase decides; a setup that skipped or failed decides instead.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _outcomes[report.nodeid] = outcome


def tally(state: State, outcomes: dict[str, str]) -> dict[str, Tally]:
    table = {surface: Tally() for surface in SURFACES}
    for nodeid, records in state.records.items():
        outcome = outcomes.get(nodeid, "")
        for surface, case, held in records:
            row = table[surface]
            row.tried += 1
            row.new += 1
            if held:
                row.held += 1
            elif outcome == "xfailed":
                row.gaps += 1
                row.gap_cases.append(f"{case} (`{nodeid}`)")
            else:
                row.broken += 1
                row.broken_cases.append(f"{case} (`{nodeid}`)")
    for nodeid, outcome in outcomes.items():
        surface = EXISTING.get(_function_id(nodeid))
        if surface is None or outcome == "skipped":
            continue
        row = table[surface]
        row.tried += 1
        row.existing += 1
        if outcome == "passed":
            row.held += 1
        elif outcome == "xfailed":
            row.gaps += 1
            row.gap_cases.append(f"`{nodeid}`")
        else:
            row.broken += 1
            row.broken_cases.append(f"`{nodeid}`")
    return table


def render(table: dict[str, Tally], skipped: dict[str, int]) -> str:
    lines = [
        BEGIN,
        "<!-- Generated by tests/security_report.py at the end of a full test run; "
        "do not edit by hand. -->",
        "",
        "| surface | hostile inputs tried | held | known gaps (xfail) | broken | "
        "new in test_security_* | counted from earlier tests | tests skipped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = Tally()
    for surface, row in table.items():
        lines.append(f"| {SURFACES[surface]} | {row.tried} | {row.held} | {row.gaps} | "
                     f"{row.broken} | {row.new} | {row.existing} | {skipped.get(surface, 0)} |")
        for name in ("tried", "held", "gaps", "broken", "new", "existing"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    lines.append(f"| **all surfaces** | **{total.tried}** | **{total.held}** | "
                 f"**{total.gaps}** | **{total.broken}** | {total.new} | {total.existing} | "
                 f"{sum(skipped.values())} |")
    gaps = [(s, c) for s, row in table.items() for c in row.gap_cases]
    broken = [(s, c) for s, row in table.items() for c in row.broken_cases]
    if gaps:
        lines += ["", "Known gaps (tests marked `xfail`; see *Findings* below):", ""]
        lines += [f"- {surface}: {case}" for surface, case in sorted(gaps)]
    if broken:
        lines += ["", "**Broken in this run** (a promise that did not hold):", ""]
        lines += [f"- {surface}: {case}" for surface, case in sorted(broken)]
    lines.append(END)
    return "\n".join(lines)


def security_modules() -> dict[str, set[str]]:
    """Each security test module on disk -> the "path::function" ids of its tests."""
    found: dict[str, set[str]] = {}
    for pattern in SECURITY_GLOBS:
        for path in sorted(TESTS.glob(pattern)):
            rel = path.relative_to(REPO).as_posix()
            # A pattern, not ast.parse: CPython 3.11's AST conversion keeps its recursion
            # depth per interpreter, and a test's thread formatting a traceback (which parses
            # too) at the same moment made it raise "recursion depth mismatch" here.
            found[rel] = {f"{rel}::{name}" for name in TOP_LEVEL_TEST.findall(path.read_text())}
    return found


def why_not_written(state: State) -> str | None:
    if os.environ.get("SECURITY_REPORT", "1") == "0":
        return "SECURITY_REPORT=0"
    if not state.records:
        return "no security test ran"
    missing = [f for tests in security_modules().values() for f in tests
               if f not in state.collected]
    missing += [f for f in EXISTING if (REPO / f.split("::")[0]).exists()
                and f not in state.collected]
    if missing or state.partial:
        return (f"partial run ({len(set(missing) | set(state.partial))} counted tests not "
                "selected)")
    if state.unrecorded:
        return f"tests took `hostile` but recorded nothing: {', '.join(state.unrecorded)}"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    reason = why_not_written(state)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reason is not None:
        if state.records and reporter is not None:
            reporter.write_line(f"security report: docs/security.md not rewritten ({reason})")
        return
    skipped: dict[str, int] = {}
    for nodeid, outcome in _outcomes.items():
        if outcome != "skipped":
            continue
        key = _function_id(nodeid)
        surface = EXISTING.get(key) or _surface_of_module(key)
        if surface:
            skipped[surface] = skipped.get(surface, 0) + 1
    table = tally(state, _outcomes)
    if write_table(render(table, skipped)) and reporter is not None:
        tried = sum(r.tried for r in table.values())
        held = sum(r.held for r in table.values())
        reporter.write_line(f"security report: {held}/{tried} hostile inputs held; "
                            "table rewritten in docs/security.md")


def _surface_of_module(key: str) -> str | None:
    name = key.split("::")[0]
    for surface, marker in (("hooks", "hooks"), ("pods", "pods"), ("runtime", "runtime"),
                            ("router", "router"), ("local", "local")):
        if "/test_security_" in name and marker in name:
            return surface
    return None


def write_table(block: str) -> bool:
    """Replace the marked block in docs/security.md; False if the markers are missing."""
    if not DOC.exists():
        return False
    text = DOC.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    new = text[:start] + block + text[end + len(END):]
    if new != text:
        DOC.write_text(new)
    return True
