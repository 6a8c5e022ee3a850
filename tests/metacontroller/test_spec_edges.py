"""Specs the API server admits that the hooks once could not act on, on the real loop
(docs/security.md, finding 34): each must reach its state with a condition, not a hook that
answers 500 on every sync.
"""

from __future__ import annotations

from tests.metacontroller.objects import (
    claim,
    is_ready,
    reason,
    rfc3339,
    sandbox,
    template,
)


def test_shutdown_times_in_lower_case_rfc3339_are_honoured(metacontroller_stack, namespace,
                                                           kubelet):
    """RFC 3339 lets `t` and `z` be lower case and the API server admits them; the hooks
    answered 500 forever (the claim never had a status, the Sandbox never a pod)."""
    stack = metacontroller_stack
    stack.apply(template(), namespace)
    later = rfc3339(600).replace("T", "t").replace("Z", "z")
    stack.apply(claim("lower", lifecycle={"shutdownTime": later}), namespace)
    done = stack.wait_for("sandboxclaim", "lower", is_ready, namespace=namespace, timeout=90)
    assert done["spec"]["lifecycle"]["shutdownTime"] == later, "the API server kept it as sent"

    past = rfc3339(-60).lower()
    stack.apply(sandbox("lower-past", volume=False, shutdownTime=past), namespace)
    stack.wait_for("sandbox", "lower-past", lambda s: reason(s) == "SandboxExpired",
                   namespace=namespace, timeout=60)
    assert stack.get("pod", "lower-past", namespace) is None
