"""SSRF through the Kubernetes path: a Sandbox whose status or spec is written to point the
router somewhere else (decimal, octal and hex IPs, loopback, metadata, foreign FQDNs, ports
it does not declare). Pure: the watch cache and the Resolver on dicts, no sockets.

Whoever can write a Sandbox's status (the hooks, or anyone granted the status subresource)
decides where the router dials; the address policy is the guard. tests/http/ covers the
static source and the wire. Records through `hostile` (tests/security_report.py).
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox_router.addresses import AddressPolicy
from sandbox_router.headers import Route
from sandbox_router.resolve import NoAddress, ResolveError, Resolver
from tests.unit.router_fakes import CacheSource, sandbox_object


def sandbox(ips, *, ports=(8888,), fqdn=None, name="sb", namespace="default"):
    return sandbox_object(name, namespace, pod_ips=list(ips), ports=ports, fqdn=fqdn)


def resolve(obj, *, port=8888, allow_loopback=False):
    source = CacheSource(obj, allow_loopback=allow_loopback)
    resolver = Resolver(source, AddressPolicy.build(allow_loopback=allow_loopback))
    route = Route(namespace="default", name="sb", port=port, timeout=1.0)
    return asyncio.run(resolver.resolve(route))


SPELLINGS = ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001",
             "0251.0376.0251.0376", "2852039166", "169.254.169.254", "fe80::1%eth0",
             "::ffff:127.0.0.1", "::ffff:a9fe:a9fe", "[::1]", "localhost", "metadata",
             "127.0.0.1:8888", " 10.0.0.1", "10.0.0.1/8", "0.0.0.0", "::"]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("shape", ["object", "string"])
def test_status_pod_ips_in_forbidden_or_odd_spellings_are_never_targets(hostile, spelling,
                                                                        shape):
    entry = {"ip": spelling} if shape == "object" else spelling
    for allow_loopback in (False, True):
        loopback = "allowed" if allow_loopback else "refused"
        with hostile("router", f"status.podIPs {spelling!r} ({shape}, loopback {loopback})"), \
                pytest.raises(NoAddress):
            resolve(sandbox([entry]), allow_loopback=allow_loopback)


def test_a_bad_address_beside_a_good_one_is_dropped_not_dialled(hostile):
    with hostile("router", "status.podIPs mixing 2130706433 with a pod address"):
        target = resolve(sandbox([{"ip": "2130706433"}, {"ip": "10.244.0.9"},
                                  {"ip": "169.254.169.254"}]))
        assert target.addresses == ("10.244.0.9",)


@pytest.mark.parametrize("fqdn", ["127.0.0.1", "2130706433", "metadata.google.internal",
                                  "sb.default.svc.cluster.local.attacker.example",
                                  "kubernetes.default.svc.cluster.local",
                                  "sb.kube-system.svc.cluster.local", "sb.default.svc"])
def test_a_forged_service_fqdn_is_never_looked_up(hostile, fqdn):
    with hostile("router", f"status.serviceFQDN {fqdn}"), pytest.raises(NoAddress):
        resolve(sandbox([], fqdn=fqdn))


@pytest.mark.parametrize("port", [22, 6443, 10250, 2379, 80])
def test_ports_the_sandbox_does_not_declare_are_refused(hostile, port):
    with hostile("router", f"undeclared port {port} on a real pod address"), \
            pytest.raises(ResolveError) as refused:
        resolve(sandbox([{"ip": "10.244.0.9"}]), port=port)
    assert refused.value.status == 404


@pytest.mark.parametrize("ports", [("8888",), (-1,), (70000,), (None,), (True,)])
def test_junk_declared_ports_open_nothing(hostile, ports):
    with hostile("router", f"spec declares containerPort {ports[0]!r}"):
        for probe in (8888, 1, 65535):
            with pytest.raises(ResolveError):
                resolve(sandbox([{"ip": "10.244.0.9"}], ports=ports), port=probe)
