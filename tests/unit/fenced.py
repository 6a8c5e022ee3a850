"""Sync requests for a Sandbox whose own NetworkPolicy is already among its children.

A Sandbox no claim controls starts its pod only once its policy is its child (hooks/sandbox.py,
docs/security.md finding 39): tests about everything after that start from there. Tests of the
first answer itself use testbed.hookrequests.sync_request.
"""

from __future__ import annotations

from typing import Any

from hooks import sandbox
from hooks.typedefs import DEFAULT_SETTINGS
from testbed import hookrequests
from testbed.hookrequests import owned


def sync_request(
    parent: dict[str, Any],
    children: list[dict[str, Any]] = (),  # type: ignore[assignment]
    related: list[dict[str, Any]] = (),  # type: ignore[assignment]
    **kwargs: Any,
) -> dict[str, Any]:
    """testbed.hookrequests.sync_request, plus the Sandbox's own policy as applied (nothing
    for other kinds, a claim's Sandbox or a bad spec)."""
    if (parent["kind"] == "Sandbox" and not sandbox.spec_problems(parent)
            and not sandbox.fenced_by_template(parent)):
        policy = owned(sandbox.desired_network_policy(parent, DEFAULT_SETTINGS), parent)
        children = [policy, *children]
    return hookrequests.sync_request(parent, children, related, **kwargs)
