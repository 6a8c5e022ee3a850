"""The NetworkPolicy that fences sandbox pods: ingress only from the sandbox-router's pods, on
the pod template's container ports; egress only to public addresses (no RFC 1918, carrier-grade
NAT, link-local, loopback or IPv6 private ranges), plus cluster DNS unless turned off.

Built for hooks/sandboxtemplate.py (one policy per template, selecting its pods by the template
label) and hooks/sandbox.py (one per Sandbox no claim controls, selecting its pod by the
Sandbox-uid label: docs/security.md, finding 39). Pure: it builds a dict from its arguments.
"""

from __future__ import annotations

from hooks import objects
from hooks.typedefs import KubeObject

# A key under agents.x-k8s.io: templates cannot set it (objects.user_keys drops such keys), so a
# sandbox pod can never pose as the router and slip past this policy.
ROUTER_POD_LABELS = {objects.ROLE_LABEL: "sandbox-router"}
PRIVATE_IPV4 = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
]
PRIVATE_IPV6 = ["::1/128", "fc00::/7", "fe80::/10"]


def container_ports(pod_template: KubeObject) -> list[KubeObject]:
    """The (port, protocol) pairs the pod template's containers declare, sorted."""
    ports = {
        (p["containerPort"], p.get("protocol", "TCP"))
        for c in pod_template["spec"].get("containers", [])
        for p in c.get("ports") or []
        if isinstance(p.get("containerPort"), int)
    }
    return [{"port": port, "protocol": protocol} for port, protocol in sorted(ports)]


def fencing_policy(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    selector: dict[str, str],
    pod_template: KubeObject,
    router_namespace: str,
    allow_cluster_dns: bool,
) -> KubeObject:
    """The policy `name` in `namespace`, fencing the pods whose labels match `selector`."""
    router = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": router_namespace}},
        "podSelector": {"matchLabels": dict(ROUTER_POD_LABELS)},
    }
    ingress: KubeObject = {"from": [router]}
    ports = container_ports(pod_template)
    if ports:
        ingress["ports"] = ports
    egress: list[KubeObject] = [
        {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_IPV4}},
                {"ipBlock": {"cidr": "::/0", "except": PRIVATE_IPV6}},
            ]
        }
    ]
    if allow_cluster_dns:
        egress.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [ingress],
            "egress": egress,
        },
    }
