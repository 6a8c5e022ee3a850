"""The Sandbox loop with a real Metacontroller: a Sandbox gets its Pod, headless Service and
volume; the test plays the kubelet and the Sandbox turns Ready; scaling to zero removes only
the Pod; deleting the Sandbox lets the garbage collector remove its children.

Skipped (reason printed) unless METACONTROLLER_BIN names a Metacontroller binary.
"""

from __future__ import annotations

from typing import Any

SANDBOX_API = "agents.x-k8s.io/v1alpha1"
POD_IP = "127.0.0.1"


def sandbox(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": SANDBOX_API, "kind": "Sandbox", "metadata": {"name": name},
        "spec": {
            "podTemplate": {
                "metadata": {"labels": {"app": "python-sandbox"}},
                "spec": {
                    "runtimeClassName": "gvisor",
                    "containers": [{
                        "name": "python-runtime",
                        "image": "registry.k8s.io/agent-sandbox/python-runtime-sandbox:v0.1.0",
                        "ports": [{"containerPort": 8888}],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "workspace"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}},
            }],
            **spec,
        },
    }


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def is_ready(obj: dict[str, Any]) -> bool:
    return ready_condition(obj).get("status") == "True"


def owned_by(child: dict[str, Any], parent: dict[str, Any]) -> bool:
    return any(ref.get("controller") and ref.get("uid") == parent["metadata"]["uid"]
               for ref in child["metadata"].get("ownerReferences", []))


def test_sandbox_gets_pod_headless_service_and_volume(metacontroller_stack, namespace):
    stack = metacontroller_stack
    parent = stack.apply(sandbox("sbx"), namespace)

    pod = stack.wait_for("pod", "sbx", None, namespace=namespace)
    service = stack.wait_for("service", "sbx", None, namespace=namespace)
    pvc = stack.wait_for("persistentvolumeclaim", "workspace-sbx", None, namespace=namespace)

    assert service["spec"]["clusterIP"] == "None"
    assert all(owned_by(child, parent) for child in (pod, service, pvc))
    # The Service selects exactly the sandbox's pod.
    selector = service["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "workspace-sbx"


def test_sandbox_turns_ready_when_its_pod_does(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("ready-sbx"), namespace)
    stack.wait_for("pod", "ready-sbx", None, namespace=namespace)
    waiting = stack.wait_for("sandbox", "ready-sbx", lambda s: bool(ready_condition(s)),
                             namespace=namespace)
    assert not is_ready(waiting), "Ready before any pod was ready"

    stack.make_pod_ready("ready-sbx", POD_IP, namespace=namespace)
    ready = stack.wait_for("sandbox", "ready-sbx", is_ready, namespace=namespace)

    status = ready["status"]
    assert status["podIPs"] == [POD_IP]
    assert status["service"] == "ready-sbx"
    assert status["serviceFQDN"].startswith(f"ready-sbx.{namespace}.svc.")
    assert status["replicas"] == 1
    assert status.get("observedGeneration") in (None, ready["metadata"]["generation"])


def test_scale_to_zero_removes_only_the_pod(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("idle"), namespace)
    stack.wait_for("pod", "idle", None, namespace=namespace)

    stack.kubectl("scale", "sandbox/idle", "-n", namespace, "--replicas=0")

    stack.wait_gone("pod", "idle", namespace=namespace)
    assert stack.get("service", "idle", namespace) is not None
    assert stack.get("persistentvolumeclaim", "workspace-idle", namespace) is not None
    scaled = stack.wait_for("sandbox", "idle", lambda s: not is_ready(s)
                            and (s.get("status") or {}).get("replicas") == 0,
                            namespace=namespace)
    assert ready_condition(scaled).get("reason")


def test_deleting_the_sandbox_removes_its_children(metacontroller_stack, namespace):
    stack = metacontroller_stack
    stack.apply(sandbox("gone"), namespace)
    stack.wait_for("pod", "gone", None, namespace=namespace)
    stack.wait_for("service", "gone", None, namespace=namespace)

    stack.kubectl("delete", "sandbox", "gone", "-n", namespace)

    # kube-controller-manager's garbage collector follows the ownerReferences.
    stack.wait_gone("pod", "gone", namespace=namespace, timeout=60)
    stack.wait_gone("service", "gone", namespace=namespace, timeout=60)
