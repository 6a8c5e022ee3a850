"""Objects and predicates the Metacontroller tier's tests share: what a user applies, and what
they read back (conditions, owners, the pods of a namespace).

Pod templates here ask for a short termination grace period (TEST_GRACE_SECONDS): the kubelet
stand-in honours it, so every deletion a test waits for costs that long, not the default 30 s.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sandbox_common.contract import EXTENSIONS_API as X
from sandbox_common.contract import (
    POOL_LABEL as POOL_LABEL,
)
from sandbox_common.contract import (
    SANDBOX_API as SANDBOX_API,
)
from sandbox_common.contract import (
    SANDBOX_LABEL as SANDBOX_LABEL,
)
from sandbox_common.contract import (
    SANDBOX_UID_LABEL as SANDBOX_UID_LABEL,
)
from testbed.hookrequests import SEED_POD_TEMPLATE

if TYPE_CHECKING:
    from testbed.metacontroller import MetacontrollerStack

TEMPLATE = "python-runtime-template"
POOL = "python-sandbox-warmpool"
TEST_GRACE_SECONDS = 2


def pod_template(grace: int = TEST_GRACE_SECONDS, image: str | None = None) -> dict[str, Any]:
    """The seed walkthrough's pod template, with a short termination grace period."""
    template = copy.deepcopy(SEED_POD_TEMPLATE)
    template["spec"]["terminationGracePeriodSeconds"] = grace
    if image:
        template["spec"]["containers"][0]["image"] = image
    return template


def sandbox(name: str, *, volume: bool = True, grace: int = TEST_GRACE_SECONDS,
            **spec: Any) -> dict[str, Any]:
    """A Sandbox of the seed's pod, with a `workspace` volume claim mounted at /app."""
    template = pod_template(grace)
    body: dict[str, Any] = {"podTemplate": template, **spec}
    if volume:
        template["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "workspace", "mountPath": "/app"}]
        body["volumeClaimTemplates"] = [{
            "metadata": {"name": "workspace"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
        }]
    return {"apiVersion": SANDBOX_API, "kind": "Sandbox", "metadata": {"name": name},
            "spec": body}


def template(name: str = TEMPLATE, *, image: str | None = None,
             grace: int = TEST_GRACE_SECONDS) -> dict[str, Any]:
    return {"apiVersion": X, "kind": "SandboxTemplate", "metadata": {"name": name},
            "spec": {"podTemplate": pod_template(grace, image)}}


def pool(replicas: int = 2, name: str = POOL, template_name: str = TEMPLATE) -> dict[str, Any]:
    return {"apiVersion": X, "kind": "SandboxWarmPool", "metadata": {"name": name},
            "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": template_name}}}


def claim(name: str, template_name: str = TEMPLATE, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": X, "kind": "SandboxClaim", "metadata": {"name": name},
            "spec": {"sandboxTemplateRef": {"name": template_name}, **spec}}


def rfc3339(seconds_from_now: float) -> str:
    """A wall-clock time that many seconds from now, as the API stores it (whole seconds)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def is_ready(obj: dict[str, Any] | None) -> bool:
    return ready_condition(obj).get("status") == "True"


def reason(obj: dict[str, Any] | None) -> str | None:
    return ready_condition(obj).get("reason")


def owned_by(child: dict[str, Any], parent: dict[str, Any]) -> bool:
    return any(ref.get("controller") and ref.get("uid") == parent["metadata"]["uid"]
               for ref in child["metadata"].get("ownerReferences", []))


def live(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp")


def free_warm(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool pods not bound to any sandbox and not being deleted."""
    return [p for p in pods
            if POOL_LABEL in p["metadata"].get("labels", {})
            and SANDBOX_LABEL not in p["metadata"]["labels"] and live(p)]


def pool_ready(replicas: int):  # type: ignore[no-untyped-def]
    """Predicate: the pool reports `replicas` free pods, all ready."""
    def check(p: dict[str, Any]) -> bool:
        status = p.get("status") or {}
        return status.get("readyReplicas") == replicas and status.get("replicas") == replicas
    return check


def eventually(check, timeout: float = 30.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll check() until it returns a truthy value; return that value, or fail with the last."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not reached in {timeout:.0f}s; last: {last!r}")


def warm_pool(stack: MetacontrollerStack, namespace: str, replicas: int) -> None:
    """Apply the seed's template and a warm pool of `replicas`; return once all are Ready."""
    stack.apply(template(), namespace)
    stack.apply(pool(replicas), namespace)
    stack.wait_for("sandboxwarmpool", POOL, pool_ready(replicas), namespace=namespace,
                   timeout=90)
