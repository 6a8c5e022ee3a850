"""Resolution of the router: Sandbox objects to records, the watch cache's event handling,
the static source's validation, and the Resolver's refusals (pure; no sockets)."""

from __future__ import annotations

import asyncio
import copy

import pytest

from sandbox_router.addresses import AddressPolicy
from sandbox_router.headers import Route
from sandbox_router.records import SandboxCache, record_from_sandbox
from sandbox_router.resolve import NoAddress, Resolver, UndeclaredPort, UnknownSandbox
from sandbox_router.sources import StaticSource
from tests.unit.router_fakes import CacheSource, sandbox_object


def sandbox(name="sb", namespace="default", ips=("10.244.0.7",), ports=(8888,), rv="1",
            fqdn=None):
    return sandbox_object(name, namespace, ips=ips, ports=ports, rv=rv, fqdn=fqdn)


def route(name="sb", namespace="default", port=8888):
    return Route(namespace=namespace, name=name, port=port, timeout=1.0)


def test_record_reads_pod_ips_and_declared_tcp_ports():
    obj = sandbox(ips=("10.0.0.1", "fd00::1"), ports=(8888, 9000))
    obj["spec"]["podTemplate"]["spec"]["containers"].append(
        {"name": "side", "ports": [{"containerPort": 53, "protocol": "UDP"},
                                   {"containerPort": 7000, "protocol": "TCP"}]})
    record = record_from_sandbox(obj)
    assert record.addresses == ("10.0.0.1", "fd00::1")
    assert record.ports == frozenset({8888, 9000, 7000})


def test_record_accepts_plain_string_pod_ips_and_ignores_junk():
    obj = sandbox(ips=())
    obj["status"]["podIPs"] = ["10.0.0.2", {"ip": ""}, 7, None, "10.0.0.2"]
    obj["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": True}, {"containerPort": "80"}, {"containerPort": 70000}, "x"]
    record = record_from_sandbox(obj)
    assert record.addresses == ("10.0.0.2",)
    assert record.ports == frozenset()


def test_cache_applies_added_modified_deleted():
    cache = SandboxCache()
    assert cache.apply({"type": "ADDED", "object": sandbox(ips=(), rv="5")}) == "5"
    assert cache.get("default", "sb").addresses == ()
    cache.apply({"type": "MODIFIED", "object": sandbox(ips=("10.1.1.1",), rv="6")})
    assert cache.get("default", "sb").addresses == ("10.1.1.1",)
    assert cache.apply({"type": "DELETED", "object": sandbox(rv="7")}) == "7"
    assert cache.get("default", "sb") is None


def test_cache_bookmarks_move_the_version_only():
    cache = SandboxCache()
    event = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}}
    assert cache.apply(event) == "99"
    assert len(cache) == 0


def test_cache_ignores_errors_and_malformed_events():
    cache = SandboxCache()
    assert cache.apply({"type": "ERROR", "object": {"code": 410}}) is None
    assert cache.apply({"type": "ADDED", "object": None}) is None
    assert cache.apply({"type": "ADDED", "object": {"metadata": {}}}) is None
    assert len(cache) == 0


def test_cache_keeps_namespaces_apart():
    cache = SandboxCache()
    cache.apply({"type": "ADDED", "object": sandbox(namespace="a", ips=("10.0.0.1",))})
    cache.apply({"type": "ADDED", "object": sandbox(namespace="b", ips=("10.0.0.2",))})
    assert cache.get("a", "sb").addresses == ("10.0.0.1",)
    assert cache.get("b", "sb").addresses == ("10.0.0.2",)


def test_relist_replaces_one_namespace_and_drops_the_vanished():
    cache = SandboxCache()
    cache.replace([sandbox("x", "a"), sandbox("y", "a"), sandbox("z", "b")])
    cache.replace([sandbox("y", "a", ips=("10.9.9.9",))], namespace="a")
    assert cache.get("a", "x") is None
    assert cache.get("a", "y").addresses == ("10.9.9.9",)
    assert cache.get("b", "z") is not None
    cache.replace([])
    assert len(cache) == 0


def test_cache_does_not_alias_the_event_object():
    cache = SandboxCache()
    obj = sandbox()
    cache.apply({"type": "ADDED", "object": obj})
    snapshot = copy.deepcopy(cache.get("default", "sb"))
    obj["status"]["podIPs"] = [{"ip": "10.6.6.6"}]
    assert cache.get("default", "sb") == snapshot


def resolve(resolver, r):
    return asyncio.run(resolver.resolve(r))


def test_resolver_returns_only_policy_approved_addresses():
    source = CacheSource(sandbox(ips=("169.254.169.254", "10.244.0.9", "::ffff:10.0.0.1")))
    target = resolve(Resolver(source, AddressPolicy()), route())
    assert target.addresses == ("10.244.0.9",)
    assert target.port == 8888


def test_resolver_refusals_carry_their_status():
    source = CacheSource(sandbox(), sandbox("noip", ips=()), sandbox("meta",
                                                                     ips=("169.254.169.254",)))
    resolver = Resolver(source, AddressPolicy())
    with pytest.raises(UnknownSandbox) as unknown:
        resolve(resolver, route("nope"))
    assert unknown.value.status == 404
    with pytest.raises(UnknownSandbox):
        resolve(resolver, route(namespace="kube-system"))
    with pytest.raises(UndeclaredPort) as port:
        resolve(resolver, route(port=22))
    assert port.value.status == 404
    with pytest.raises(NoAddress, match="no pod address") as none:
        resolve(resolver, route("noip"))
    assert none.value.status == 502
    with pytest.raises(NoAddress, match="refused by policy"):
        resolve(resolver, route("meta"))


def test_service_fqdn_is_used_only_under_the_sandboxes_own_name():
    # A foreign FQDN (another namespace's service, an external host) is never looked up.
    for fqdn in ("kube-dns.kube-system.svc.cluster.local", "example.com",
                 "sb.other.svc.cluster.local", "sb.default.svc.cluster.local.evil.com"):
        source = CacheSource(sandbox(ips=(), fqdn=fqdn))
        with pytest.raises(NoAddress, match="no pod address"):
            resolve(Resolver(source, AddressPolicy()), route())


def test_static_source_parses_keys_and_defaults_the_namespace():
    source = StaticSource({"sandboxes": {"one": {"addresses": ["10.0.0.1"], "ports": [1]},
                                         "team/two": {"addresses": [], "ports": [2, 3]}}})
    assert source.lookup("default", "one").addresses == ("10.0.0.1",)
    assert source.lookup("team", "two").ports == frozenset({2, 3})
    assert source.allow_loopback is False
    assert len(source) == 2


@pytest.mark.parametrize("data", [
    {"sandboxes": {"Bad/x": {"addresses": [], "ports": []}}},
    {"sandboxes": {"a/b/c": {"addresses": [], "ports": []}}},
    {"sandboxes": {"x": {"addresses": ["localhost"], "ports": [1]}}},
    {"sandboxes": {"x": {"addresses": ["2130706433"], "ports": [1]}}},
    {"sandboxes": {"x": {"addresses": "10.0.0.1", "ports": [1]}}},
    {"sandboxes": {"x": {"addresses": [], "ports": [0]}}},
    {"sandboxes": {"x": {"addresses": [], "ports": [True]}}},
    {"sandboxes": ["x"]},
    {"allow_loopback": "yes"},
])
def test_static_source_refuses_bad_files(data):
    with pytest.raises(ValueError):
        StaticSource(data)


def test_static_loopback_needs_the_explicit_flag():
    data = {"sandboxes": {"x": {"addresses": ["127.0.0.1"], "ports": [1]}}}
    closed = StaticSource(data)
    with pytest.raises(NoAddress, match="refused by policy"):
        resolve(Resolver(closed, AddressPolicy.build(allow_loopback=closed.allow_loopback)),
                route("x", port=1))
    opened = StaticSource({**data, "allow_loopback": True})
    target = resolve(Resolver(opened, AddressPolicy.build(allow_loopback=opened.allow_loopback)),
                     route("x", port=1))
    assert target.addresses == ("127.0.0.1",)
